"""What changed between two codings of a records file (a new served model, or a new version
of the file): every row of the new coding is unchanged, changed, or new; rows are matched by
the file's id column (and, for repeated ids, by their order)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from naics_ml.data.codes import sector_of

__all__ = ["ChangeReport", "change_report", "keyed_codes"]


@dataclass(frozen=True)
class ChangeReport:
    """Counts that sum to the new coding's rows, and the changed rows' transitions."""

    rows: int
    unchanged: int
    changed: int
    new: int
    transitions: pl.DataFrame  # old_code, new_code, rows, old_confidence, new_confidence
    by_sector: pl.DataFrame  # sector (of the new code), changed rows

    def markdown(self, limit: int = 20) -> str:
        """The counts and the most frequent transitions, as the asset's metadata shows them."""
        lines = [
            f"{self.rows:,} rows: {self.unchanged:,} unchanged, {self.changed:,} changed, "
            f"{self.new:,} new",
            "",
            "| old code | new code | rows | old confidence | new confidence |",
            "|---|---|---|---|---|",
        ]
        for row in self.transitions.head(limit).iter_rows(named=True):
            lines.append(
                f"| {row['old_code']} | {row['new_code']} | {row['rows']:,} | "
                f"{row['old_confidence']:.2f} | {row['new_confidence']:.2f} |"
            )
        return "\n".join(lines)


def keyed_codes(path: Path, id_column: str) -> pl.LazyFrame:
    """A coded file's id (as text), occurrence of that id, code and confidence."""
    return (
        pl.scan_parquet(path)
        .select(pl.col(id_column).cast(pl.String).alias("id"), "code", "confidence")
        .with_columns(pl.col("id").cum_count().over("id").alias("occurrence"))
    )


def change_report(previous: Path, current: Path, id_column: str) -> ChangeReport:
    """Compare the coding ``previous`` with ``current`` (both written by ``code_records``)."""
    old = keyed_codes(previous, id_column).rename(
        {"code": "old_code", "confidence": "old_confidence"}
    )
    new = keyed_codes(current, id_column).rename(
        {"code": "new_code", "confidence": "new_confidence"}
    )
    old = old.with_columns(pl.lit(True).alias("was_coded"))
    known = (
        new.join(old, on=["id", "occurrence"], how="left")
        .with_columns(
            pl.when(pl.col("was_coded").is_null())
            .then(pl.lit("new"))
            .when(pl.col("old_code").eq_missing(pl.col("new_code")))
            .then(pl.lit("unchanged"))
            .otherwise(pl.lit("changed"))
            .alias("status")
        )
        .collect()
    )
    changed = known.filter(pl.col("status") == "changed")
    transitions = (
        changed.group_by("old_code", "new_code")
        .agg(
            pl.len().alias("rows"),
            pl.col("old_confidence").mean(),
            pl.col("new_confidence").mean(),
        )
        .sort("rows", "old_code", "new_code", descending=[True, False, False], nulls_last=True)
    )
    sectors = changed.select(
        pl.col("new_code").map_elements(sector_of, return_dtype=pl.String).alias("sector")
    )
    by_sector = sectors.group_by("sector").len("changed").sort("changed", descending=True)
    counts = known["status"].value_counts()
    count = dict(zip(counts["status"], counts["count"], strict=True))
    return ChangeReport(
        rows=known.height,
        unchanged=count.get("unchanged", 0),
        changed=count.get("changed", 0),
        new=count.get("new", 0),
        transitions=transitions,
        by_sector=by_sector,
    )
