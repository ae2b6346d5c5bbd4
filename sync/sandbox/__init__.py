"""A local, honest emulator of the Personyze Users API, for tests, the demo and dry runs.

    with SandboxServer(api_key="k") as api:
        ...  # point the sync at api.url; inspect api.users() and api.requests

It behaves as the live service was observed to (see ``PERSONYZE_API.md``): only
email and user_id merge a POST or find a user; internal_id and fb_id are stored and
returned but never merged on or matched by ``where`` unless ``internal_id_merges=True``
(the wiki's behaviour). In both modes reads past offset + limit 1000 are refused, a
read whose ``where`` holds a range condition (``> < >= <=``) is refused with a bare
400 (empty body) past offset + limit 50 (no limit counts as 1000), and empty values
are dropped. Faults can be injected with :class:`Faults`.
"""

from sync.sandbox.query import RequestError
from sync.sandbox.server import FaultKind, Faults, RecordedRequest, SandboxServer
from sync.sandbox.users import UserStore

__all__ = ["FaultKind", "Faults", "RecordedRequest", "RequestError", "SandboxServer", "UserStore"]
