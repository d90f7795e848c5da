"""``naics_embeddings``: every code's coordinates from the final stage, and their picture; and
the stage that serves ``predict`` (chosen on validation), registered as the MLflow model.

The two may be different stages on purpose: the coordinates come from the stage table's last
stage (``FINAL_STAGE``, ``stage_03_hard``), the one trained hardest on the tree (the hierarchy
figures), while the classifier users get is the stage whose blend scored best on the
validation sets (``models/serving.json``), which the CLI's default and the registered model's
alias ``served-<revision>`` both load.
"""

import base64
import json
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from naics_assets.assets.stages import STAGE_ASSETS
from naics_assets.partitions import revision_partitions
from naics_assets.resources import ArtifactStore
from naics_assets.tracking import MlflowTracker, served_alias
from naics_ml.stage_table import FINAL_STAGE, STAGE_NAMES

if TYPE_CHECKING:
    import polars as pl

    from naics_ml.embeddings import EmbeddingsReport
    from naics_ml.revision_folder import RevisionFolder

PICTURE = "naics_embeddings_disk.png"  # beside naics_embeddings.parquet


@dg.asset(
    partitions_def=revision_partitions,
    automation_condition=dg.AutomationCondition.eager(),
    deps=[STAGE_ASSETS[FINAL_STAGE]],
    group_name="training",
    kinds={"pytorch", "parquet"},
)
def naics_embeddings(
    context: dg.AssetExecutionContext, store: ArtifactStore, mlflow: MlflowTracker
) -> dg.MaterializeResult:
    """Code, level, title, Lorentz and Poincare coordinates and radius of every code, a
    Poincare-disk picture, per-level structure and the evaluation; also records which stage
    serves ``predict`` (``models/serving.json``, best on validation) and registers it as a
    version of ``naics-gemini-classifier`` when it changed."""
    from naics_ml.embeddings import build_embeddings
    from naics_ml.evaluation.metrics import level_metrics
    from naics_ml.evaluation.tables import comparison_table
    from naics_ml.inference.serving import choose_served_stage, selection_scores

    revision = context.partition_key
    folder = store.revision(revision)
    stage = folder.stage(FINAL_STAGE)
    table_path = folder.embeddings
    with store.lock(context):
        report = build_embeddings(stage.path, table_path, table_path.with_name(PICTURE))
        served = choose_served_stage(folder, STAGE_NAMES)  # by validation, not by position
        stage_run = _log_to_stage_run(context, mlflow, report)
        registered = _register_served(context, mlflow, folder, served)
    metrics = json.loads(stage.metrics.read_text())
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
            "embedding_stage": stage.name,
            "served_stage": served.name,
            **registered,
            "selection_scores": dg.MetadataValue.json(selection_scores(folder, STAGE_NAMES)),
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


def _stage_run_id(context: dg.AssetExecutionContext, stage: str) -> str | None:
    """The MLflow run of the newest materialization of ``stage`` for this partition."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(stage), asset_partitions=[context.partition_key]
        ),
        limit=1,
    ).records
    materialization = records[0].asset_materialization if records else None
    entry = None if materialization is None else materialization.metadata.get("mlflow_run_id")
    return None if entry is None else str(entry.value)


def _log_to_stage_run(
    context: dg.AssetExecutionContext, mlflow: MlflowTracker, report: "EmbeddingsReport"
) -> str:
    """Add the picture to the MLflow run of the final stage's materialization this
    partition was built from (whose metrics already hold the level figures); the run id, or
    why nothing was logged."""
    run_id = _stage_run_id(context, FINAL_STAGE)
    if run_id is None:
        context.log.warning(f"no {FINAL_STAGE} MLflow run recorded; picture not logged there")
        return "none recorded"
    run = mlflow.existing_run(run_id)
    run.log_artifact(report.picture)
    return run.run_id


def _register_served(
    context: dg.AssetExecutionContext,
    mlflow: MlflowTracker,
    revision_folder: "RevisionFolder",
    served: Path,
) -> dict[str, str]:
    """The served stage as the registered model's ``served-<revision>`` version, logged in
    that stage's MLflow run (a new run when none is recorded); the version and the alias's URI
    as metadata."""
    from naics_ml.inference.pyfunc import REGISTERED_MODEL
    from naics_ml.inference.serving import selection_scores

    revision, stage = revision_folder.revision, served.name
    score = selection_scores(revision_folder, [stage])[stage]
    tags = {
        "naics_revision": revision,
        "stage": stage,
        "selection_score": f"{score:.6f}",
        "dagster_run_id": context.run.run_id,
    }
    run_id = _stage_run_id(context, stage)
    if run_id is not None:
        version = mlflow.existing_run(run_id).register_served(served, revision, tags)
    else:
        context.log.warning(f"no {stage} MLflow run recorded; the served model gets its own run")
        with mlflow.start_run(f"{revision}/served", tags) as run:
            version = run.register_served(served, revision, tags)
    return {
        "registered_model": f"{REGISTERED_MODEL}/{version}",
        "served_model_uri": f"models:/{REGISTERED_MODEL}@{served_alias(revision)}",
    }
