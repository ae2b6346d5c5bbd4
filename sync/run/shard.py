"""``backfill --shard I``: one shard of a sharded job, in this process only.

For a Kubernetes Indexed Job (``completionMode: Indexed``, one pod per shard): the
manifest passes each pod its ``JOB_COMPLETION_INDEX`` as ``--shard``. The shard is run
as ``backfill --processes`` runs each process's share of the parts: :func:`run_job`
with ``only`` its part, under the part's lease, from the part's checkpoint; so a pod
that died and is started again with its index resumes where its shard stood.
"""

from __future__ import annotations

from sync.config.jobs import JobSettings
from sync.errors import ConfigError, RetriableError
from sync.model import RunOptions, RunStats
from sync.run.parts import ProgressFor, run_job
from sync.wiring import Wiring


def shard_part(wiring: Wiring, job: JobSettings, shard: int) -> str:
    """The name of part ``shard`` of ``job`` (``customers#1/3``); refused unless the job
    is sharded and has that shard."""
    if job.shards == 1:
        raise ConfigError(
            f"--shard {shard}: job {job.name} has no shards (shards: 1), so there is no "
            f"shard to run alone; drop --shard, or set shards: N in the job and run "
            f"personyze-sync checkpoint reset -c CONFIG {job.name} --reshard"
        )
    if shard >= job.shards:
        raise ConfigError(
            f"--shard {shard}: job {job.name} has {job.shards} shards, numbered 0 to "
            f"{job.shards - 1} (an Indexed Job runs completions: {job.shards})"
        )
    name, _ = wiring.parts(job)[shard]
    return name


def run_shard(
    wiring: Wiring,
    job: JobSettings,
    options: RunOptions,
    progress: ProgressFor | None = None,
    *,
    shard: int,
) -> RunStats:
    """Run shard ``shard`` of ``job`` alone.

    A shard another process holds (a replica, or the pod this one replaces, whose
    connection PostgreSQL has not yet seen close) is not done: it fails with exit 1, so
    that Kubernetes starts the index again after its back-off, rather than counting
    the shard complete.
    """
    name = shard_part(wiring, job, shard)
    stats = run_job(wiring, job, options, progress, only=[name])
    if stats.held_elsewhere:
        holders = [lease.holder for lease in wiring.store.leases() if lease.name == name]
        by = f" ({holders[0]})" if holders else ""
        raise RetriableError(
            f"shard {name} is being run by another process{by}; nothing was run: "
            "run it again once that has ended (a Kubernetes Job retries the index)"
        )
    return stats
