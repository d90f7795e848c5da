"""Classify a file of business descriptions: CSV, Parquet or JSON lines in, the same out.

Every input column is kept (ids, anything else) and each input row becomes ``top_k`` rows with
``rank``, ``code``, ``title``, ``confidence``, ``fallback_code``, ``fallback_title``,
``evidence`` (the top code's supporting entries), ``warning`` (an exclusion the text resembles,
with the code the Census sends it to) and ``error``. A null or blank text gets one row with an
empty prediction and the reason in ``error``; the other rows are still classified. The output is
written to a temporary file and renamed, so an interrupted run leaves no partial file.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from naics_ml.io import atomic_path

__all__ = [
    "FORMATS",
    "InputError",
    "classify_frame",
    "prediction_rows",
    "read_texts",
    "write_table",
]

FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
PREDICTION_SCHEMA = {
    "rank": pl.Int32,
    "code": pl.String,
    "title": pl.String,
    "confidence": pl.Float64,
    "fallback_code": pl.String,
    "fallback_title": pl.String,
    "evidence": pl.String,
    "warning": pl.String,
    "error": pl.String,
}


class InputError(ValueError):
    """A file or column the batch cannot use; the message names it."""


def file_format(path: Path) -> str:
    kind = FORMATS.get(Path(path).suffix.lower())
    if kind is None:
        raise InputError(f"{path}: unknown format; use one of {', '.join(sorted(FORMATS))}")
    return kind


def read_texts(path: Path, text_column: str) -> pl.DataFrame:
    """The input table; errors name the file and, when it is missing, the column."""
    path = Path(path)
    kind = file_format(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        if kind == "csv":
            frame = pl.read_csv(path, infer_schema_length=0)  # every column as text: ids stay
        elif kind == "parquet":
            frame = pl.read_parquet(path)
        else:
            frame = pl.read_ndjson(path)
    except Exception as error:  # polars raises several kinds for a malformed file
        raise InputError(f"{path}: cannot be read as {kind} ({error})") from error
    if frame.height == 0:
        raise InputError(f"{path}: the file has no rows")
    if text_column not in frame.columns:
        raise InputError(f"{path}: no column {text_column!r} (columns: {', '.join(frame.columns)})")
    clash = sorted(set(PREDICTION_SCHEMA) & set(frame.columns))
    if clash:
        raise InputError(f"{path}: columns {clash} would be overwritten by the predictions")
    return frame


def prediction_rows(predictions: list[Any]) -> list[dict[str, Any]]:
    """One text's ranked predictions as output rows (evidence and warnings as text)."""
    rows = []
    for rank, p in enumerate(predictions, start=1):
        warning = "; ".join(
            f"{w.exclusion} -> {w.alternative_code} {w.alternative_title}" for w in p.warnings
        )
        rows.append(
            {
                "rank": rank,
                "code": p.code,
                "title": p.title,
                "confidence": p.confidence,
                "fallback_code": p.fallback_code,
                "fallback_title": p.fallback_title,
                "evidence": json.dumps([e.text for e in p.evidence]),
                "warning": warning or None,
                "error": None,
            }
        )
    return rows


def classify_frame(
    classify: Callable[[list[str]], list[list[Any]]],
    frame: pl.DataFrame,
    text_column: str,
    batch_size: int = 256,
    progress: bool = True,
) -> pl.DataFrame:
    """Every row of ``frame`` with its predictions (``classify``: texts -> ranked predictions)."""
    from tqdm.auto import tqdm

    texts = frame[text_column].cast(pl.String).to_list()
    valid = [i for i, t in enumerate(texts) if t is not None and t.strip()]
    results: dict[int, list[dict[str, Any]]] = {}
    with tqdm(total=len(valid), file=sys.stderr, disable=not progress, unit="text") as bar:
        for start in range(0, len(valid), batch_size):
            chunk = valid[start : start + batch_size]
            for i, predictions in zip(chunk, classify([texts[i] for i in chunk]), strict=True):
                results[i] = prediction_rows(predictions)
            bar.update(len(chunk))
    empty = dict.fromkeys(PREDICTION_SCHEMA)
    source, rows = [], []
    for i, text in enumerate(texts):
        reason = "text is null" if text is None else "text is blank"
        for row in results.get(i) or [{**empty, "error": reason}]:
            source.append(i)
            rows.append(row)
    predictions = pl.DataFrame(rows, schema=PREDICTION_SCHEMA)
    return pl.concat([frame[source], predictions], how="horizontal")


def write_table(frame: pl.DataFrame, path: Path) -> Path:
    """Write by the file's suffix, atomically (temporary file, then rename)."""
    kind = file_format(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if kind == "csv":
            frame.write_csv(tmp)
        elif kind == "parquet":
            frame.write_parquet(tmp)
        else:
            frame.write_ndjson(tmp)
    return Path(path)
