"""A records file coded by a served stage: every input row with its rank-1 code and title,
calibrated confidence, fallback code, top-5 candidates and evidence, written as Parquet in
chunks (memory does not grow with the file) to a temporary file that is renamed at the end,
so the codes of an earlier run stay readable until the new ones are complete."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from naics_ml.data.codes import sector_of
from naics_ml.io import atomic_path
from naics_ml.records.source import RecordsError, RecordsSettings, read_chunks

__all__ = ["CODE_COLUMNS", "CodingConfig", "CodingSummary", "code_records"]

CANDIDATE = pl.Struct({"code": pl.String, "title": pl.String, "confidence": pl.Float64})
CODE_COLUMNS = {  # added after the input columns
    "code": pl.String,
    "title": pl.String,
    "confidence": pl.Float64,
    "fallback_code": pl.String,
    "fallback_title": pl.String,
    "fallback_confidence": pl.Float64,
    "top5": pl.List(CANDIDATE),
    "evidence": pl.List(pl.String),
    "error": pl.String,
}


@dataclass(frozen=True)
class CodingConfig:
    """Rows read and classified at once, and the confidence below which a row needs review
    (also the fallback's threshold)."""

    chunk_rows: int = 5_000
    min_confidence: float = 0.5
    top_k: int = 5


@dataclass
class CodingSummary:
    """What a coded file holds: rows, rows below the threshold, codes by sector."""

    rows: int = 0
    low_confidence: int = 0
    errors: int = 0
    by_sector: Counter[str] = field(default_factory=Counter)

    @property
    def low_confidence_share(self) -> float:
        return self.low_confidence / self.rows if self.rows else 0.0


Classify = Callable[[list[str], int, float], list[list[Any]]]  # Classifier.predict


def code_records(
    classify: Classify,
    source: tuple[Path, RecordsSettings],
    out_path: Path,
    config: CodingConfig = CodingConfig(),
) -> CodingSummary:
    """Code every row of the records file ``source`` (path, settings) with ``classify``
    (``Classifier.predict``) into ``out_path``; a null or blank text gets no code and says why
    in ``error``. The rows below ``config.min_confidence`` also go to the review file beside
    it (:func:`review_path`), both written atomically."""
    path, settings = source
    summary = CodingSummary()
    writer: pq.ParquetWriter | None = None
    with (
        atomic_path(out_path) as tmp,
        atomic_path(review_path(out_path)) as review,
        review.open("w", newline="") as review_file,
    ):
        try:
            for chunk in read_chunks(path, settings, config.chunk_rows):
                clash = sorted(set(CODE_COLUMNS) & set(chunk.columns))
                if clash:
                    raise RecordsError(f"{path}: columns {clash} would be overwritten by codes")
                table = _coded_chunk(classify, chunk, settings.text_column, config, summary)
                arrow = table.to_arrow()
                writer = writer or pq.ParquetWriter(tmp, arrow.schema)
                writer.write_table(arrow.cast(writer.schema))
                rows = review_rows(table, settings, config)
                rows.write_csv(review_file, include_header=review_file.tell() == 0)
        finally:
            if writer is not None:
                writer.close()
    return summary


def review_path(out_path: Path) -> Path:
    """The review file of a coded records file: ``<file>.review.csv`` beside its codes."""
    return Path(out_path).with_name(Path(out_path).name.removesuffix(".parquet") + ".review.csv")


def review_rows(
    coded: pl.DataFrame, settings: RecordsSettings, config: CodingConfig
) -> pl.DataFrame:
    """The coded rows below ``config.min_confidence``: id, text, the ``top_k`` candidates
    (code, title, confidence) and an empty ``reviewed_code`` for the reviewer to fill."""
    low = coded.filter(pl.col("confidence") < config.min_confidence)
    columns = [pl.col(settings.id_column).cast(pl.String), pl.col(settings.text_column)]
    for rank in range(config.top_k):
        candidate = pl.col("top5").list.get(rank, null_on_oob=True).struct
        for name in ("code", "title", "confidence"):
            columns.append(candidate.field(name).alias(f"candidate_{rank + 1}_{name}"))
    columns.append(pl.lit(None, dtype=pl.String).alias("reviewed_code"))
    return low.select(columns)


def _coded_chunk(
    classify: Classify,
    chunk: pl.DataFrame,
    text_column: str,
    config: CodingConfig,
    summary: CodingSummary,
) -> pl.DataFrame:
    texts = chunk[text_column].cast(pl.String).to_list()
    valid = [i for i, t in enumerate(texts) if t is not None and t.strip()]
    ranked = classify([texts[i] for i in valid], config.top_k, config.min_confidence)
    by_row = dict(zip(valid, ranked, strict=True))
    rows = []
    for i, text in enumerate(texts):
        predictions = by_row.get(i)
        if not predictions:
            rows.append({"error": "text is null" if text is None else "text is blank"})
            summary.errors += 1
            continue
        rows.append(_row(predictions))
        summary.by_sector[sector_of(predictions[0].code)] += 1
        summary.low_confidence += predictions[0].confidence < config.min_confidence
    summary.rows += len(texts)
    codes = pl.DataFrame(rows, schema=CODE_COLUMNS)
    # a column that is null throughout a chunk has no type: text, as in the other chunks
    untyped = [pl.col(c).cast(pl.String) for c, kind in chunk.schema.items() if kind == pl.Null]
    return pl.concat([chunk.with_columns(untyped), codes], how="horizontal")


def _row(predictions: list[Any]) -> dict[str, Any]:
    top = predictions[0]
    return {
        "code": top.code,
        "title": top.title,
        "confidence": top.confidence,
        "fallback_code": top.fallback_code,
        "fallback_title": top.fallback_title,
        "fallback_confidence": top.fallback_confidence,
        "top5": [
            {"code": p.code, "title": p.title, "confidence": p.confidence} for p in predictions
        ],
        "evidence": [e.text for e in top.evidence],
        "error": None,
    }
