"""``verify``: read users back from Personyze and compare them with the source as it is now.

- :mod:`sync.verify.parts`: :func:`verify`, each part of a job in turn (under its
  lease when it repairs)
- :mod:`sync.verify.verifier`: one part's rows read back and classified, then repaired
- :mod:`sync.verify.report`: what was found (the comparison itself is :mod:`sync.compare`)
"""

from sync.verify.parts import verify
from sync.verify.report import DRIFT, SAMPLE, Finding, Kind, Repair, VerifyReport, combine
from sync.verify.verifier import Verifier

__all__ = [
    "DRIFT",
    "SAMPLE",
    "Finding",
    "Kind",
    "Repair",
    "Verifier",
    "VerifyReport",
    "combine",
    "verify",
]
