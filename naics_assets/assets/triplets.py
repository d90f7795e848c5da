"""``naics_triplets``: hardness-labelled triplets as parquet shards, one folder per sector."""

import dagster as dg
import polars as pl
from pydantic import Field

from naics_assets.assets.codes import naics_codes
from naics_assets.assets.distances import naics_distances
from naics_assets.checks import TRIPLET_CHECKS, result
from naics_assets.partitions import revision_partitions
from naics_assets.resources import ArtifactStore
from naics_ml.data import invariants
from naics_ml.data.taxonomy import matrix_from_pairs
from naics_ml.triplets.generate import TripletConfig
from naics_ml.triplets.shards import build_triplet_shards, shard_sectors

HARDNESS_NAMES = {
    8: "exclusion",
    7: "d_diff<=0.5",
    6: "d_diff<=1",
    5: "d_diff<=2",
    4: "d_diff<=3",
    3: "d_diff<=4",
    2: "d_diff>4",
    1: "cross-sector",
}


class TripletsConfig(dg.Config):
    """Launchpad settings. ``sectors`` rebuilds only those shards (others stay as they are)."""

    sectors: list[str] = Field(default_factory=list, description="Empty = every sector.")
    cross_sector_k: int = Field(default=64, description="Cross-sector negatives per (a, p).")
    seed: int = 42
    workers: int = Field(default=0, description="Processes; 0 = one per CPU.")


@dg.asset(
    partitions_def=revision_partitions,
    automation_condition=dg.AutomationCondition.eager(),
    deps=[naics_codes, naics_distances],
    group_name="taxonomy",
    kinds={"numpy", "parquet"},
    check_specs=TRIPLET_CHECKS,
)
def naics_triplets(
    context: dg.AssetExecutionContext, config: TripletsConfig, store: ArtifactStore
) -> dg.MaterializeResult:
    """(anchor, positive, negative) index triplets with hardness 1-8, sharded by anchor sector."""
    revision = context.partition_key
    codes = pl.read_parquet(store.revision(revision).codes)
    distance = matrix_from_pairs(pl.read_parquet(store.revision(revision).distances), codes.height)
    out = store.revision(revision).triplets
    with store.lock(context):
        report = build_triplet_shards(
            codes,
            out,
            TripletConfig(cross_sector_k=config.cross_sector_k, seed=config.seed),
            sectors=config.sectors or None,
            workers=config.workers or None,
            distance=distance,
        )
    by_hardness = "| hardness | kind | triplets |\n|---|---|---|\n" + "\n".join(
        f"| {h} | {HARDNESS_NAMES[h]} | {n:,} |" for h, n in sorted(report.rows_by_hardness.items())
    )
    by_sector = "| sector | triplets |\n|---|---|\n" + "\n".join(
        f"| {s} | {n:,} |" for s, n in report.rows_by_sector.items()
    )
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(out)),
            "dagster/row_count": report.rows,
            "sectors_built": len(report.rows_by_sector),
            "part_files": len(report.files),
            "triplets_by_hardness": dg.MetadataValue.md(by_hardness),
            "triplets_by_sector": dg.MetadataValue.md(by_sector),
            **{f"hardness_{h}": n for h, n in report.rows_by_hardness.items()},
        },
        check_results=[
            result("distance_order", invariants.check_triplet_order(out)),
            result("sector_coverage", invariants.check_shard_coverage(shard_sectors(out), codes)),
        ],
    )
