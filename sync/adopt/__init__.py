"""Adoption: a new, moved or lost state store takes over the users Personyze already holds.

A row without an email cannot be merged by Personyze: the live service does not merge
on internal_id (nor on fb_id), so a state store that never synced a job would make a
second user of every such row the first time it sends it. Before that, an adoption
reads the users Personyze holds, in user_id order, 50 at a time (``user_id>N`` is a
range read, refused past 50 rows), and gives each source row the user whose identifier
(internal_id, else fb_id) it carries:

- the scan: each part's source rows (rows ``delete_when`` marks and rows the mapping
  refuses are left out) are recorded in ``psync_adopt_wanted`` with their identifier,
  payload and fingerprint, and the adoption starts;
- the pass: pages of users from where it stopped (it resumes after a crash); a user
  that a row of any job already holds, or that this adoption already gave a row, is
  never given again; the lowest user_id wins, a later user with the same identifier
  is recorded as a duplicate. A user holding the row's payload already is "in step"
  and keeps the row's fingerprint (the next run skips it); others are resent, with
  their user_id. Each page is saved in one transaction. Reading stops once every row
  looked for is found, at a short page, or past the highest user_id there was;
- the finish: found rows move into the identity map (never over a row it has).

One pass serves every part of a job (its shards). Personyze also holds every tracked
visitor, so an account may hold millions of users: :meth:`Adopter.estimate` says what a
pass costs before it starts.

A run that finds a part never synced calls :func:`adopt_or_refuse`: it adopts inline
when that is cheap (``INLINE_READS``) and otherwise stops with :class:`AdoptionNeeded`,
naming the ``adopt`` command.

``plan``: the estimate, the need, the texts; ``adopter``: the pass and :func:`adopt_or_refuse`.
"""

from sync.adopt.adopter import Adopter, Progress, adopt_or_refuse
from sync.adopt.plan import (
    IDENTIFIER_ORDER,
    INLINE_READS,
    AdoptionSummary,
    Estimate,
    adoption_needed,
    cost_text,
    duration_text,
    identifier_of,
    identifier_text,
    mapped_columns,
    refusal,
)

__all__ = [
    "IDENTIFIER_ORDER",
    "INLINE_READS",
    "Adopter",
    "AdoptionSummary",
    "Estimate",
    "Progress",
    "adopt_or_refuse",
    "adoption_needed",
    "cost_text",
    "duration_text",
    "identifier_of",
    "identifier_text",
    "mapped_columns",
    "refusal",
]
