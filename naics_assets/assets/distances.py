"""``naics_distances``: every unordered pair of codes with its tree distance."""

import dagster as dg
import polars as pl

from naics_assets.assets.codes import naics_codes
from naics_assets.checks import DISTANCE_CHECKS, result
from naics_assets.partitions import revision_partitions
from naics_assets.resources import ArtifactStore
from naics_ml.data import invariants
from naics_ml.data.taxonomy import (
    build_tree,
    matrix_from_pairs,
    pair_table,
    tree_distance_matrix,
    validate_tree,
)
from naics_ml.io import write_parquet_atomic


@dg.asset(
    partitions_def=revision_partitions,
    automation_condition=dg.AutomationCondition.eager(),
    deps=[naics_codes],
    group_name="taxonomy",
    kinds={"networkx", "parquet"},
    check_specs=DISTANCE_CHECKS,
)
def naics_distances(
    context: dg.AssetExecutionContext, store: ArtifactStore
) -> dg.MaterializeResult:
    """Tree distance, LCA level, relation and exclusion flag for all n(n-1)/2 pairs (as indices)."""
    revision = context.partition_key
    with store.lock(context):
        codes = pl.read_parquet(store.revision(revision).codes)
        tree = build_tree(codes)
        validate_tree(tree)
        pairs = pair_table(codes)
        path = write_parquet_atomic(pairs, store.revision(revision).distances)
    matrix = matrix_from_pairs(pairs, codes.height)
    relations = pairs.group_by("relation").len().sort("relation")
    table = "| relation | pairs |\n|---|---|\n" + "\n".join(
        f"| {r} | {n:,} |" for r, n in relations.iter_rows()
    )
    within = pairs.filter(pl.col("relation") != "cross_sector").height
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "dagster/row_count": pairs.height,
            "pairs_within_sector": within,
            "pairs_across_sectors": pairs.height - within,
            "excluded_pairs": int(pairs["excluded"].sum()),
            "tree_nodes": tree.number_of_nodes(),
            "tree_edges": tree.number_of_edges(),
            "pairs_by_relation": dg.MetadataValue.md(table),
        },
        check_results=[
            result("pair_count", invariants.check_pairs(pairs, codes.height)),
            result("symmetric", invariants.check_symmetric(matrix, tree_distance_matrix(codes))),
            result("triangle_inequality", invariants.check_triangle(matrix)),
        ],
    )
