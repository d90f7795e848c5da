"""Reviewed records as training labels (``NAICS_LABELS_DIR``).

A reviewer fills ``reviewed_code`` in a review file (:func:`naics_ml.records.coding.review_path`)
and saves it into the labels folder. Every file there (CSV, Parquet or JSON lines with the
columns ``text`` and ``reviewed_code``) is read and checked here: a row without a reviewed code
is not reviewed yet; a code that is not a six-digit code of the revision and an empty text are
named (file and line) and skipped; a text that is an evaluation text (a Boston text or an index
``validation``/``test`` entry, compared as normalized text) is dropped, so a reviewed file can
never carry an evaluation set into training. The rest is split by a hash of the text into
train and validation, the same way at every run and in every revision.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import polars as pl

from naics_ml.data.index_split import normalize_text
from naics_ml.data.realtext import RealTextSplit, split_labelled_texts
from naics_ml.inference.batch import FORMATS
from naics_ml.records.source import RecordsError

__all__ = [
    "LABELS_SPLIT",
    "LABEL_COLUMNS",
    "LabelFileReport",
    "read_label_file",
    "reviewed_labels",
    "with_reviewed_labels",
]

LABEL_COLUMNS = ("text", "reviewed_code")
LABELS_SPLIT = RealTextSplit(validation=0.2, salt="naics-gemini-labels")
LABELS_SCHEMA = {"text": pl.String, "code": pl.String, "split": pl.String, "file": pl.String}


@dataclass(frozen=True)
class LabelFileReport:
    """What one labels file gave: rows read, rows reviewed, rows kept for training and for
    validation, and the rows skipped, each named by its line (the header is line 1)."""

    name: str
    rows: int = 0
    reviewed: int = 0
    train: int = 0
    validation: int = 0
    unknown_codes: list[tuple[int, str]] = field(default_factory=list)
    empty_texts: list[int] = field(default_factory=list)
    evaluation_texts: list[int] = field(default_factory=list)

    def problems(self) -> str:
        """The skipped rows, e.g. ``unknown code 999999 (line 4); empty text (line 7)``."""
        named = [f"unknown code {code} (line {line})" for line, code in self.unknown_codes]
        named += [f"empty text (line {line})" for line in self.empty_texts]
        named += [f"evaluation text (line {line})" for line in self.evaluation_texts]
        return "; ".join(named)


def read_label_file(
    path: Path, known_codes: Collection[str], evaluation_texts: Collection[str]
) -> tuple[pl.DataFrame, LabelFileReport]:
    """The usable reviewed rows of ``path`` (``text``, ``code``, ``line``) and its report.
    ``evaluation_texts`` are normalized texts (:func:`normalize_text`) never to train on."""
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise RecordsError(f"{path}: unknown format; use one of {', '.join(sorted(FORMATS))}")
    try:
        frame = {
            "csv": lambda: pl.read_csv(path, infer_schema=False),
            "parquet": lambda: pl.read_parquet(path),
            "jsonl": lambda: pl.read_ndjson(path),
        }[kind]()
    except Exception as error:  # polars raises several kinds for a malformed file
        raise RecordsError(f"{path}: cannot be read as {kind} ({error})") from error
    missing = [c for c in LABEL_COLUMNS if c not in frame.columns]
    if missing:
        raise RecordsError(
            f"{path}: no column(s) {missing} (a labels file needs {list(LABEL_COLUMNS)}; "
            f"columns: {', '.join(frame.columns)})"
        )
    rows = frame.select(
        pl.col("text").cast(pl.String).str.strip_chars(),
        pl.col("reviewed_code").cast(pl.String).str.strip_chars().alias("code"),
        (pl.int_range(pl.len()) + 2).alias("line"),
    )
    reviewed = rows.filter(pl.col("code").is_not_null() & (pl.col("code") != ""))
    known, evaluation = set(known_codes), set(evaluation_texts)
    unknown, empty, held, kept = [], [], [], []
    for text, code, line in reviewed.iter_rows():
        if code not in known:
            unknown.append((line, code))
        elif not text:
            empty.append(line)
        elif normalize_text(text) in evaluation:
            held.append(line)
        else:
            kept.append((text, code, line))
    report = LabelFileReport(path.name, rows.height, reviewed.height, 0, 0, unknown, empty, held)
    schema = {"text": pl.String, "code": pl.String, "line": pl.Int64}
    usable = pl.DataFrame(kept, schema=schema, orient="row")
    return usable, report


def reviewed_labels(
    folder: Path,
    known_codes: Collection[str],
    evaluation_texts: Collection[str],
    split: RealTextSplit = LABELS_SPLIT,
) -> tuple[pl.DataFrame, list[LabelFileReport]]:
    """Every labels file of ``folder`` (by name; hidden files left out) read, checked and split:
    rows of ``text``, ``code``, ``split`` (``train`` or ``validation``) and ``file``, and a
    report per file. A text reviewed twice keeps its last file's code."""
    frames, reports = [], []
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in FORMATS)
    for path in [p for p in files if p.is_file() and not p.name.startswith(".")]:
        usable, report = read_label_file(path, known_codes, evaluation_texts)
        frames.append(usable.select("text", "code").with_columns(pl.lit(path.name).alias("file")))
        reports.append(report)
    labels = pl.concat(frames) if frames else pl.DataFrame(schema=LABELS_SCHEMA).drop("split")
    labels = labels.unique("text", keep="last", maintain_order=True)
    train, validation = split_labelled_texts(labels, split)
    out = pl.concat(
        [
            train.with_columns(pl.lit("train").alias("split")),
            validation.with_columns(pl.lit("validation").alias("split")),
        ]
    ).select(list(LABELS_SCHEMA))
    counts = {(f, s): n for f, s, n in out.group_by("file", "split").len().iter_rows()}
    reports = [
        replace(
            r,
            train=counts.get((r.name, "train"), 0),
            validation=counts.get((r.name, "validation"), 0),
        )
        for r in reports
    ]
    return out, reports


def with_reviewed_labels(
    realtext: Mapping[str, pl.DataFrame | None], labels_path: Path
) -> tuple[dict[str, pl.DataFrame | None], dict[str, int]]:
    """The real-text frames of a stage (``train``, ``val``, ...: ``text`` and ``codes``) with the
    reviewed labels of ``labels_path`` (written by :func:`reviewed_labels`) added: their train
    rows to ``train``, their validation rows to ``val``; and the train rows per labels file."""
    out = dict(realtext)
    if not Path(labels_path).is_file():
        return out, {}
    labels = pl.read_parquet(labels_path)
    for split, key in (("train", "train"), ("validation", "val")):
        rows = labels.filter(pl.col("split") == split)
        rows = rows.select("text", pl.concat_list("code").alias("codes"))
        if rows.height:
            out[key] = rows if out.get(key) is None else pl.concat([out[key], rows])
    trained = labels.filter(pl.col("split") == "train").group_by("file").len()
    return out, dict(sorted(trained.iter_rows()))
