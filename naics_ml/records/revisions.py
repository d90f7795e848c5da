"""A records file coded in two revisions: how often a record's two codes agree where they can,
on the codes whose six-digit code and title are the same in both revisions (a one-to-one part
of the two code tables; a code that was split, merged or renamed is left out)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from naics_ml.records.changes import keyed_codes

__all__ = ["revision_agreement", "stable_codes"]


def stable_codes(codes_a: pl.DataFrame, codes_b: pl.DataFrame) -> pl.DataFrame:
    """The six-digit codes with the same code and title in both code tables (``code``)."""

    def six(codes: pl.DataFrame) -> pl.DataFrame:
        return codes.filter(pl.col("level") == 6).select("code", pl.col("title").str.strip_chars())

    return six(codes_a).join(six(codes_b), on=["code", "title"], how="inner").select("code")


def revision_agreement(
    coded: Path, other: Path, stable: pl.DataFrame, id_column: str
) -> dict[str, float]:
    """Over the records whose code in ``coded`` is a stable code: how many there are, and the
    share whose code in ``other`` (the same file coded in another revision) is the same."""
    here = keyed_codes(coded, id_column).filter(pl.col("code").is_in(stable["code"].implode()))
    there = keyed_codes(other, id_column).select("id", "occurrence", pl.col("code").alias("other"))
    joined = here.join(there, on=["id", "occurrence"], how="inner").collect()
    agree = int(joined.filter(pl.col("code") == pl.col("other")).height)
    rows = joined.height
    return {"rows": rows, "agree": agree, "share": agree / rows if rows else float("nan")}
