"""Real business descriptions labelled with NAICS codes: loading and the validation split.

Census index entries are short official phrasings; users type what firms write about
themselves. ``../shared/realtext/`` holds two such sets (see its ``SOURCES.md``):

- ``boston_certified_businesses.csv``: evaluation only. It is never a training text, query or
  memory entry, and never chooses a setting; every stage reports ``realtext_*`` on it.
- ``maryland_mbe_directory.csv``: free to use. :func:`split_labelled_texts` holds a fixed part out
  as the real-text validation set (``realtext_val_*``, which chooses settings beside the index
  ``validation`` split); the rest may train the query path.

A row may carry several codes (a firm lists up to three, none primary); the metrics
(:mod:`naics_ml.evaluation.realtext_metrics`) count a prediction as a hit when it is any of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

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
