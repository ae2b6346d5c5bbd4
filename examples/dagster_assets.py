"""A Dagster asset that runs a personyze-sync job, for teams whose pipeline Dagster runs.

    pip install 'personyze-sync[dagster]'
    PERSONYZE_SYNC_CONFIG=personyze-sync.yaml dagster dev -f examples/dagster_assets.py

``personyze_asset(config, job)`` makes one asset per job: materializing it runs the job
once (from its checkpoint, as ``personyze-sync once JOB`` does), logs the counts, puts
them in the materialization's metadata, and fails the Dagster run when the sync fails
(rows Personyze refused are not a failure: they are kept and counted). Give it
``deps=`` to run after the assets that build its source, a dbt model say::

    customers_in_personyze = personyze_asset(CONFIG, "customers", deps=["customers"])
"""

# No `from __future__ import annotations` here: Dagster reads the annotations at run time.
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from sync import Sync


def personyze_asset(
    config: str | Path, job: str, *, deps: Sequence[Any] = (), name: str | None = None
) -> dg.AssetsDefinition:
    """An asset that runs ``job`` of the config file ``config`` once."""

    @dg.asset(
        name=name or f"personyze_{job}".replace("-", "_"),
        deps=list(deps),
        group_name="personyze",
        description=f"personyze-sync job {job!r}: its rows kept in step in Personyze",
        kinds={"personyze"},
    )
    def sync_job(context: dg.AssetExecutionContext) -> dg.MaterializeResult[None]:
        with Sync(config) as sync:
            result = sync.once(job)
        done = result[job]
        counts = {
            "read": done.read,
            "sent": done.sent,
            "unchanged": done.unchanged,
            "rejected": done.rejected,
            "deleted": done.deleted,
        }
        context.log.info(f"personyze-sync {job}: {done.outcome} {counts}")
        for row in done.rejected_rows[:20]:
            context.log.warning(f"personyze-sync {job}: row {row.key} rejected: {row.reason}")
        result.raise_for_failure()  # the Dagster run fails with the sync's own message
        return dg.MaterializeResult(
            metadata={
                **counts,
                "run_ids": dg.MetadataValue.json(dict(done.run_ids)),
                "checkpoint": str(done.checkpoint.cursor) if done.checkpoint else "",
            }
        )

    return sync_job


CONFIG = os.environ.get("PERSONYZE_SYNC_CONFIG", "personyze-sync.yaml")
customers = personyze_asset(CONFIG, "customers")
defs = dg.Definitions(assets=[customers])
