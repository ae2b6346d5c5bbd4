"""Running jobs: the one place where the stages (extract, map, load, state) meet.

- :mod:`sync.run.parts`: :func:`run_job`, each part of a job under its lease
- :mod:`sync.run.job`: one part's run, its phases in order
- :mod:`sync.run.feed`: one batch of rows: skip, send, delete or reject each
- :mod:`sync.run.window`, :mod:`sync.run.commit`: rows in order while their requests
  finish in any order, and the checkpoint rule
- :mod:`sync.run.deletes`: deletes under ``max_deletes_per_run``
- :mod:`sync.run.processes`: a sharded backfill spread over processes
"""

from sync.run.parts import job_run, run_all, run_job
from sync.run.processes import LogSetup, run_in_processes

__all__ = ["LogSetup", "job_run", "run_all", "run_in_processes", "run_job"]
