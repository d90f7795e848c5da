"""``naics_embeddings``: every code's coordinates from the final stage, and their picture."""

import base64
import json
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from naics_assets.assets.stages import stage_03_hard
from naics_assets.partitions import revision_partitions
from naics_assets.resources import ArtifactStore
from naics_assets.tracking import MlflowTracker

if TYPE_CHECKING:
    import polars as pl

    from naics_ml.embeddings import EmbeddingsReport

STAGES = ("stage_01_easy", "stage_02_medium", "stage_03_hard")
PICTURE = "naics_embeddings_disk.png"  # beside naics_embeddings.parquet


@dg.asset(
    partitions_def=revision_partitions,
    automation_condition=dg.AutomationCondition.eager(),
    deps=[stage_03_hard],
    group_name="training",
    kinds={"pytorch", "parquet"},
)
def naics_embeddings(
    context: dg.AssetExecutionContext, store: ArtifactStore, mlflow: MlflowTracker
) -> dg.MaterializeResult:
    """Code, level, title, Lorentz and Poincare coordinates and radius of every code, a
    Poincare-disk picture, per-level structure and the evaluation; also records which stage
    serves ``predict`` (``models/serving.json``, best on validation)."""
    from naics_ml.embeddings import build_embeddings
    from naics_ml.evaluation.metrics import level_metrics
    from naics_ml.evaluation.stage_report import comparison_table
    from naics_ml.inference.serving import choose_served_stage, selection_scores

    revision = context.partition_key
    stage_dir = store.model_dir(revision, "stage_03_hard")
    table_path = store.embeddings_path(revision)
    models = store.revision_dir(revision) / "models"
    with store.lock(context):
        report = build_embeddings(stage_dir, table_path, table_path.with_name(PICTURE))
        served = choose_served_stage(models, STAGES)  # by validation, not by position
        stage_run = _log_to_stage_run(context, mlflow, report)
    metrics = json.loads((stage_dir / "metrics.json").read_text())
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(report.table)),
            "picture": dg.MetadataValue.path(str(report.picture)),
            "poincare_disk": dg.MetadataValue.md(_inline_png(report.picture)),
            "dagster/row_count": report.rows,
            "dimensions": report.dimensions,
            "levels": dg.MetadataValue.md(_levels_table(report.levels)),
            **level_metrics(report.levels),
            "evaluation": dg.MetadataValue.md(comparison_table(metrics)),
            "served_stage": served.name,
            "selection_scores": dg.MetadataValue.json(selection_scores(models, STAGES)),
            "mlflow_stage_run": stage_run,
        }
    )


def _levels_table(levels: "pl.DataFrame") -> str:
    rows = "\n".join(
        f"| {lvl} | {n:,} | {radius:.3f} | {'-' if share is None else f'{share:.3f}'} |"
        for lvl, n, radius, share in levels.iter_rows()
    )
    head = "| level | codes | mean radius | parent is nearest of its level |\n|---|---|---|---|\n"
    return head + rows


def _inline_png(path: Path) -> str:
    """Markdown showing the PNG itself in the asset's metadata (a data URI)."""
    data = base64.b64encode(path.read_bytes()).decode()
    return f"![Poincare disk of the codes](data:image/png;base64,{data})"


def _log_to_stage_run(
    context: dg.AssetExecutionContext, mlflow: MlflowTracker, report: "EmbeddingsReport"
) -> str:
    """Add the picture to the MLflow run of the ``stage_03_hard`` materialization this
    partition was built from (whose metrics already hold the level figures); the run id, or
    why nothing was logged."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=stage_03_hard.key, asset_partitions=[context.partition_key]
        ),
        limit=1,
    ).records
    materialization = records[0].asset_materialization if records else None
    entry = None if materialization is None else materialization.metadata.get("mlflow_run_id")
    if entry is None:
        context.log.warning("no stage_03_hard MLflow run recorded; picture not logged there")
        return "none recorded"
    run = mlflow.existing_run(str(entry.value))
    run.log_artifact(report.picture)
    return run.run_id
