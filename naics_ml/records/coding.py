"""A records file coded by a served stage: every input row with its rank-1 code and title,
calibrated confidence, fallback code, top-5 candidates and evidence, written as Parquet in
chunks (memory does not grow with the file) to a temporary file that is renamed at the end,
so the codes of an earlier run stay readable until the new ones are complete. A large file is
coded as parts (:class:`~naics_ml.records.source.RecordsPart`), each into its own file, that
:func:`join_parts` puts together in file order."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from naics_ml.data.codes import sector_of
from naics_ml.io import atomic_path
from naics_ml.records.source import RecordsError, RecordsPart, RecordsSettings

__all__ = [
    "CODE_COLUMNS",
    "CodingConfig",
    "CodingSummary",
    "code_records",
    "join_parts",
    "summarize",
]

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
    """Rows read at once, texts classified at once (as ``naics-gemini classify --input``
    does), and the confidence below which a row needs review (also the fallback's
    threshold)."""

    chunk_rows: int = 5_000
    min_confidence: float = 0.5
    top_k: int = 5
    batch_size: int = 256


@dataclass(frozen=True)
class CodingSummary:
    """What a coded file holds: rows, rows below the threshold, rows without text, codes by
    sector, and the distinct codes."""

    rows: int
    low_confidence: int
    errors: int
    by_sector: dict[str, int]
    codes: frozenset[str]

    @property
    def low_confidence_share(self) -> float:
        return self.low_confidence / self.rows if self.rows else 0.0


def summarize(coded: Path, min_confidence: float) -> CodingSummary:
    """Count what the coded file ``coded`` holds, reading only its code columns."""
    frame = pl.scan_parquet(coded).select("code", "confidence", "error")
    counts = frame.select(
        pl.len().alias("rows"),
        (pl.col("confidence") < min_confidence).sum().alias("low"),
        pl.col("error").is_not_null().sum().alias("errors"),
    ).collect()
    per_code = dict(frame.drop_nulls("code").group_by("code").len().collect().iter_rows())
    by_sector: Counter[str] = Counter()
    for code, n in per_code.items():
        by_sector[sector_of(code)] += n
    rows, low, errors = counts.row(0)
    return CodingSummary(rows, low, errors, dict(by_sector), frozenset(per_code))


Classify = Callable[[list[str], int, float], list[list[Any]]]  # Classifier.predict


def code_records(
    classify: Classify,
    part: RecordsPart,
    out_path: Path,
    config: CodingConfig = CodingConfig(),
) -> None:
    """Code every row of ``part`` (a whole file by default) with ``classify``
    (``Classifier.predict``) into ``out_path``; a null or blank text gets no code and says why
    in ``error``. The rows below ``config.min_confidence`` also go to the review file beside
    it (:func:`review_path`), both written atomically."""
    path, settings = part.path, part.settings
    writer: pq.ParquetWriter | None = None
    with (
        atomic_path(out_path) as tmp,
        atomic_path(review_path(out_path)) as review,
        review.open("w", newline="") as review_file,
    ):
        try:
            for chunk in part.chunks(config.chunk_rows):
                clash = sorted(set(CODE_COLUMNS) & set(chunk.columns))
                if clash:
                    raise RecordsError(f"{path}: columns {clash} would be overwritten by codes")
                table = _coded_chunk(classify, chunk, settings.text_column, config)
                arrow = table.to_arrow()
                writer = writer or pq.ParquetWriter(tmp, arrow.schema)
                writer.write_table(arrow.cast(writer.schema))
                low = review_rows(table, settings, config)
                low.write_csv(review_file, include_header=review_file.tell() == 0)
        finally:
            if writer is not None:
                writer.close()


def join_parts(parts: list[Path], out_path: Path) -> None:
    """Put the coded parts (each written by :func:`code_records`) together into ``out_path``
    and their review files into its review file, in the order given, row group by row group
    (memory holds one group), both written atomically. A column that a part typed differently
    (a JSON-lines number, say) takes the first part's type."""
    if not parts:
        raise ValueError(f"{out_path}: no coded parts to join")
    schema = pq.read_schema(parts[0])
    with atomic_path(out_path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for part in parts:
            coded = pq.ParquetFile(part)
            for group in range(coded.num_row_groups):
                writer.write_table(coded.read_row_group(group).cast(schema))
    with atomic_path(review_path(out_path)) as tmp, tmp.open("wb") as review:
        for index, part in enumerate(parts):
            with review_path(part).open("rb") as lines:
                if index:
                    lines.readline()  # the header, written once
                shutil.copyfileobj(lines, review)


def review_path(out_path: Path) -> Path:
    """The review file of a coded records file: ``<file>.review.csv`` beside its codes."""
    return Path(out_path).with_name(Path(out_path).name.removesuffix(".parquet") + ".review.csv")


def review_rows(
    coded: pl.DataFrame, settings: RecordsSettings, config: CodingConfig
) -> pl.DataFrame:
    """The coded rows below ``config.min_confidence``: ``id``, ``text``, the ``top_k``
    candidates (code, title, confidence) and an empty ``reviewed_code`` for the reviewer to
    fill. Whatever the records file calls its columns, a review file is a labels file
    (:mod:`naics_ml.records.labels`) once ``reviewed_code`` is filled in."""
    low = coded.filter(pl.col("confidence") < config.min_confidence)
    columns = [
        pl.col(settings.id_column).cast(pl.String).alias("id"),
        pl.col(settings.text_column).cast(pl.String).alias("text"),
    ]
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
) -> pl.DataFrame:
    texts = chunk[text_column].cast(pl.String).to_list()
    valid = [i for i, t in enumerate(texts) if t is not None and t.strip()]
    ranked = [
        predictions
        for start in range(0, len(valid), config.batch_size)
        for predictions in classify(
            [texts[i] for i in valid[start : start + config.batch_size]],
            config.top_k,
            config.min_confidence,
        )
    ]
    by_row = dict(zip(valid, ranked, strict=True))
    rows = []
    for i, text in enumerate(texts):
        predictions = by_row.get(i)
        if not predictions:
            rows.append({"error": "text is null" if text is None else "text is blank"})
            continue
        rows.append(_row(predictions))
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
