"""A local, honest emulator of the Personyze REST API, for tests, the demo and dry runs.

    with SandboxServer(api_key="k") as api:
        ...  # point the sync at api.url; inspect api.users() and api.requests

It behaves as the live service was observed to (see ``PERSONYZE_API.md``): only
email and user_id merge a POST or find a user; internal_id and fb_id are stored and
returned but never merged on or matched by ``where`` unless ``internal_id_merges=True``
(the wiki's behaviour). In both modes reads past offset + limit 1000 are refused, a
read whose ``where`` holds a range condition (``> < >= <=``) is refused with a bare
400 (empty body) past offset + limit 50 (no limit counts as 1000), and empty values
are dropped. Faults can be injected with :class:`Faults`.

Besides users it serves ``products`` (:mod:`sync.sandbox.products`: unique
internal_id, POST in patch mode) and the audiences, ``user_lists`` and
``user_list_users`` (:mod:`sync.sandbox.audiences`: names not unique, a meaningless
answer to adding a member, "User not found by ..."), under the same read limits,
faults, authentication and request log; inspect them with ``api.products()``,
``api.user_lists()`` and ``api.members(list_id)``. Where the documentation is silent
(removing a member, above all) those modules' docstrings say what we inferred.
"""

from sync.sandbox.audiences import AudienceStore
from sync.sandbox.products import ProductStore
from sync.sandbox.query import RequestError
from sync.sandbox.server import FaultKind, Faults, RecordedRequest, SandboxServer
from sync.sandbox.users import UserStore

__all__ = [
    "AudienceStore",
    "FaultKind",
    "Faults",
    "ProductStore",
    "RecordedRequest",
    "RequestError",
    "SandboxServer",
    "UserStore",
]
