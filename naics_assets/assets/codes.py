"""``naics_index_entries`` and ``naics_codes``: the clean tables every later asset reads."""

import dagster as dg
import polars as pl

from naics_assets.assets.census import census_workbooks
from naics_assets.checks import CODES_CHECKS, INDEX_CHECKS, result
from naics_assets.partitions import revision_partitions
from naics_assets.resources import ArtifactStore
from naics_ml.data import invariants
from naics_ml.data.census import read_census
from naics_ml.data.codes import build_code_table, level_counts, unresolved_references
from naics_ml.data.index_split import (
    UNASSIGNED_CODE,
    SplitConfig,
    split_index_entries,
    split_sizes,
)
from naics_ml.io import write_parquet_atomic


class IndexSplitConfig(dg.Config):
    """Shares of the index-entry splits; the hash salt fixes which entry lands where."""

    examples: float = 0.35
    train: float = 0.35
    validation: float = 0.10
    test: float = 0.20
    salt: str = "naics-gemini"


@dg.asset(
    partitions_def=revision_partitions,
    automation_condition=dg.AutomationCondition.eager(),
    deps=[census_workbooks],
    group_name="census",
    kinds={"polars", "parquet"},
    check_specs=INDEX_CHECKS,
)
def naics_index_entries(
    context: dg.AssetExecutionContext, config: IndexSplitConfig, store: ArtifactStore
) -> dg.MaterializeResult:
    """Census index entries split into examples / train / validation / test without leakage."""
    revision = context.partition_key
    with store.lock(context):
        tables = read_census(store.revision(revision).census, revision)
        bare = build_code_table(tables)
        shares = (config.examples, config.train, config.validation, config.test, config.salt)
        entries = split_index_entries(tables.index, bare, SplitConfig(*shares))
        path = write_parquet_atomic(entries, store.revision(revision).entries)
    sizes = split_sizes(entries)
    unassigned = tables.index.filter(pl.col("code") == UNASSIGNED_CODE).height
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "dagster/row_count": entries.height,
            "dropped_unassigned_rows": unassigned,
            "dropped_rows_without_text": tables.index.height - entries.height - unassigned,
            "codes_with_entries": entries["code"].n_unique(),
            **{f"split_{name}": n for name, n in sizes.items()},
        },
        check_results=[result("no_split_leakage", invariants.check_split_leakage(entries, bare))],
    )


@dg.asset(
    partitions_def=revision_partitions,
    automation_condition=dg.AutomationCondition.eager(),
    deps=[census_workbooks, naics_index_entries],
    group_name="census",
    kinds={"polars", "parquet"},
    check_specs=CODES_CHECKS,
)
def naics_codes(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
    """One row per code: level, parent, sector, title, description, examples, exclusions."""
    revision = context.partition_key
    with store.lock(context):
        tables = read_census(store.revision(revision).census, revision)
        entries = pl.read_parquet(store.revision(revision).entries)
        codes = build_code_table(tables, entries.filter(pl.col("split") == "examples"))
        path = write_parquet_atomic(codes, store.revision(revision).codes)
    counts = level_counts(codes)
    unresolved = unresolved_references(tables)
    if unresolved:
        context.log.warning(
            f"{len(unresolved)} cross-reference(s) name a code {revision} does not have, e.g. "
            f"{unresolved[:5]} (code, named code): kept as text, not linked"
        )
    table = "| level | codes |\n|---|---|\n" + "\n".join(
        f"| {k} | {v:,} |" for k, v in counts.items()
    )
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "dagster/row_count": codes.height,
            "codes_by_level": dg.MetadataValue.md(table),
            **{f"level_{k}": v for k, v in counts.items()},
            "range_sectors": ", ".join(
                codes.filter(pl.col("code_range").str.contains("-"))["code_range"]
            ),
            "missing_descriptions": codes["description"].null_count(),
            "codes_with_examples": codes.height - codes["examples"].null_count(),
            "codes_with_exclusions": codes.height - codes["excluded"].null_count(),
            "excluded_code_links": int(codes["excluded_codes"].list.len().sum()),
            "unresolved_cross_references": len(unresolved),
            "unresolved_examples": ", ".join(f"{c}->{t}" for c, t in unresolved[:20]) or "none",
        },
        check_results=[
            result("level_counts", invariants.check_level_counts(codes, revision)),
            result("parents_exist", invariants.check_parents(codes)),
        ],
    )
