"""Real business descriptions labelled with NAICS codes: loading, the validation split, metrics.

Census index entries are short official phrasings; users type what firms write about
themselves. ``../shared/realtext/`` holds two such sets (see its ``SOURCES.md``):

- ``boston_certified_businesses.csv``: evaluation only. It is never a training text, query or
  memory entry, and never chooses a setting; every stage reports ``realtext_*`` on it.
- ``maryland_mbe_directory.csv``: free to use. :func:`split_labelled_texts` holds a fixed part out
  as the real-text validation set (``realtext_val_*``, which chooses settings beside the index
  ``validation`` split); the rest may train the query path.

A row may carry several codes (a firm lists up to three, none primary): a prediction is a hit
when it is any of them; group and sector accuracy likewise compare with any of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from naics_ml.evaluate import naics_sector

EVAL_FILE = "boston_certified_businesses.csv"
VAL_FILE = "maryland_mbe_directory.csv"
EVAL_PREFIX = "realtext_"
VAL_PREFIX = "realtext_val_"
REALTEXT_KEYS = ("hit1", "hit5", "mrr", "group_at_1", "sector_at_1")


class RealTextFormatError(ValueError):
    """A labelled-text file that cannot be read as ``text``, ``naics_codes`` columns."""


@dataclass(frozen=True)
class RealTextSplit:
    """Share of a free-to-use file held out for validation, and the salt of the hash."""

    validation: float = 0.4
    salt: str = "naics-gemini-realtext"

    def __post_init__(self) -> None:
        if not 0.0 <= self.validation <= 1.0:
            raise ValueError(f"RealTextSplit.validation must be in [0, 1], got {self.validation}")


def load_labelled_texts(path: Path | str, known_codes: Sequence[str] | None = None) -> pl.DataFrame:
    """``text`` and ``codes`` (list of six-digit codes) of a labelled CSV, one row per text.

    Codes not in ``known_codes`` (when given) are dropped, and so are rows left without a code
    or with a blank text; the error names the file and the missing column.
    """
    path = Path(path)
    try:
        frame = pl.read_csv(path, infer_schema=False)
    except (OSError, pl.exceptions.PolarsError) as error:
        raise RealTextFormatError(f"{path}: cannot read as CSV ({error})") from error
    missing = [c for c in ("text", "naics_codes") if c not in frame.columns]
    if missing:
        raise RealTextFormatError(f"{path}: missing column(s) {missing}; has {frame.columns}")
    frame = frame.select(
        pl.col("text").str.strip_chars(),
        pl.col("naics_codes").str.split(";").list.eval(pl.element().str.strip_chars()),
    )
    if known_codes is not None:
        known = pl.Series(list(known_codes), dtype=pl.String)
        frame = frame.with_columns(
            pl.col("naics_codes").list.filter(pl.element().is_in(known.implode()))
        )
    frame = frame.rename({"naics_codes": "codes"})
    return frame.filter(
        pl.col("text").is_not_null() & (pl.col("text") != "") & (pl.col("codes").list.len() > 0)
    )


def split_labelled_texts(
    frame: pl.DataFrame, split: RealTextSplit = RealTextSplit()
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(train, validation) rows, chosen by a hash of the lower-cased text: stable across runs,
    and equal texts always land on the same side."""

    def held_out(text: str) -> bool:
        key = f"{split.salt}\x00{text.casefold()}".encode()
        digest = hashlib.blake2b(key, digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 < split.validation

    mask = pl.Series([held_out(t) for t in frame["text"].to_list()], dtype=pl.Boolean)
    return frame.filter(~mask), frame.filter(mask)


def realtext_metrics(
    score: np.ndarray,
    candidate_codes: Sequence[str] | np.ndarray,
    true_codes: Sequence[Sequence[str]],
    prefix: str = EVAL_PREFIX,
) -> dict[str, float]:
    """hit@1, hit@5, MRR, 4-digit group and sector at rank 1, with several true codes a row.

    ``score`` (q, m) ranks the candidates, higher first (a probability, or minus a distance).
    A row's rank is that of its best-ranked true code; ties count against the model, as in
    ``naics_ml.evaluate.retrieval_metrics``. True codes outside the candidates never hit.
    """
    score = np.asarray(score, dtype=np.float64)
    candidates = np.asarray(candidate_codes, dtype=object)
    if score.shape != (len(true_codes), candidates.size):
        raise ValueError(
            f"score {score.shape} does not match {len(true_codes)} texts x "
            f"{candidates.size} candidates"
        )
    if not len(true_codes):
        return {f"{prefix}{k}": float("nan") for k in REALTEXT_KEYS}
    position = {c: i for i, c in enumerate(candidates)}
    top = candidates[np.argmax(score, axis=1)]
    rank = np.empty(len(true_codes))
    group_hit = np.empty(len(true_codes), dtype=bool)
    sector_hit = np.empty(len(true_codes), dtype=bool)
    top_sector = naics_sector(top)
    for row, codes in enumerate(true_codes):
        cols = [position[c] for c in codes if c in position]
        best = score[row, cols].max() if cols else np.inf
        rank[row] = (score[row] >= best).sum() if cols else np.inf
        group_hit[row] = any(str(top[row])[:4] == c[:4] for c in codes)
        sector_hit[row] = top_sector[row] in set(naics_sector(list(codes)))
    return {
        f"{prefix}hit1": float(np.mean(rank <= 1)),
        f"{prefix}hit5": float(np.mean(rank <= 5)),
        f"{prefix}mrr": float(np.mean(1.0 / rank)),
        f"{prefix}group_at_1": float(np.mean(group_hit)),
        f"{prefix}sector_at_1": float(np.mean(sector_hit)),
    }


def sector_hit_rates(
    score: np.ndarray,
    candidate_codes: Sequence[str] | np.ndarray,
    true_codes: Sequence[Sequence[str]],
) -> pl.DataFrame:
    """Per sector of a row's first code: rows, hit@1 and the most frequent wrong sector."""
    candidates = np.asarray(candidate_codes, dtype=object)
    top = candidates[np.argmax(np.asarray(score), axis=1)]
    rows = pl.DataFrame(
        {
            "sector": naics_sector([codes[0] for codes in true_codes]).tolist(),
            "hit": [str(t) in set(codes) for t, codes in zip(top, true_codes, strict=True)],
            "predicted_sector": naics_sector(top).tolist(),
        }
    )
    wrong = (
        rows.filter(pl.col("predicted_sector") != pl.col("sector"))
        .group_by("sector", "predicted_sector")
        .len()
        .sort("len", descending=True)
        .unique("sector", keep="first")
        .select("sector", pl.col("predicted_sector").alias("main_confusion"))
    )
    return (
        rows.group_by("sector")
        .agg(pl.len().alias("rows"), pl.col("hit").mean().alias("hit1"))
        .join(wrong, on="sector", how="left")
        .sort("sector")
    )
