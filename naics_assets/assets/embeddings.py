"""``naics_embeddings``: every code's coordinates on the hyperboloid from the final stage."""

import json

import dagster as dg

from naics_assets.assets.stages import stage_03_hard
from naics_assets.partitions import revision_partitions
from naics_assets.resources import ArtifactStore

STAGES = ("stage_01_easy", "stage_02_medium", "stage_03_hard")


@dg.asset(
    partitions_def=revision_partitions,
    deps=[stage_03_hard],
    group_name="training",
    kinds={"pytorch", "parquet"},
)
def naics_embeddings(
    context: dg.AssetExecutionContext, store: ArtifactStore
) -> dg.MaterializeResult:
    """Code, level, title, Lorentz coordinates and radius of every code, with the evaluation;
    also records which stage serves ``predict`` (``models/serving.json``, best on validation)."""
    import polars as pl

    from naics_ml.evaluation.stage_report import comparison_table
    from naics_ml.inference.classifier import Classifier
    from naics_ml.inference.serving import choose_served_stage, selection_scores
    from naics_ml.io import write_parquet_atomic

    revision = context.partition_key
    stage_dir = store.model_dir(revision, "stage_03_hard")
    table = Classifier.from_checkpoint(stage_dir, memory=False).code_embeddings()
    path = write_parquet_atomic(table, store.embeddings_path(revision))
    by_level = table.group_by("level").agg(
        pl.len().alias("codes"), pl.col("radius").mean().alias("mean"), pl.col("radius").std()
    )
    rows = "\n".join(
        f"| {lvl} | {n:,} | {mean:.3f} | {std:.3f} |"
        for lvl, n, mean, std in by_level.sort("level").iter_rows()
    )
    metrics = json.loads((stage_dir / "metrics.json").read_text())
    models = store.revision_dir(revision) / "models"
    served = choose_served_stage(models, STAGES)  # by validation, not by position
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "dagster/row_count": table.height,
            "dimensions": len(table["coordinates"][0]),
            "radius_by_level": dg.MetadataValue.md(
                "| level | codes | mean radius | std |\n|---|---|---|---|\n" + rows
            ),
            "evaluation": dg.MetadataValue.md(comparison_table(metrics)),
            "served_stage": served.name,
            "selection_scores": dg.MetadataValue.json(selection_scores(models, STAGES)),
        }
    )
