"""Noticing new NAICS revisions (add the partition, run the whole graph for it), and the sensor
that lets every downstream asset follow its upstream (``AutomationCondition.eager()``)."""

import dagster as dg

from naics_assets.partitions import revision_partitions
from naics_assets.resources import CensusSource

revision_job = dg.define_asset_job(
    "naics_revision_job",
    selection=dg.AssetSelection.all() - dg.AssetSelection.groups("records"),
    description="Every revision-partitioned asset, census workbooks to embeddings.",
)


@dg.sensor(job=revision_job, minimum_interval_seconds=24 * 3600)
def new_revision_sensor(
    context: dg.SensorEvaluationContext, census: CensusSource
) -> dg.SensorResult:
    """Revisions the source offers but the instance does not know yet become partitions and runs."""
    known = context.instance.get_dynamic_partitions(revision_partitions.name)
    new = [r for r in census.available_revisions(list(known)) if r not in known]
    if not new:
        return dg.SensorResult(skip_reason=f"no new revision (known: {sorted(known)})")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=r, run_key=f"revision-{r}") for r in new],
        dynamic_partitions_requests=[revision_partitions.build_add_request(new)],
    )


automation_sensor = dg.AutomationConditionSensorDefinition(
    "naics_automation_sensor",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    emit_backfills=False,  # one run per revision with every requested asset, in graph order
    description="Requests the assets whose automation condition holds (docs/operations.md).",
)
