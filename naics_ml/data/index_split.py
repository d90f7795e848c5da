"""Census index entries -> examples / train / validation / test, deterministic and leak-free.

The index file is both a text channel (``examples``) and our only large source of real queries, so
the held-out splits must never reach a training text. Entries are grouped by a normalized key
(case, punctuation, word order and simple plurals folded) and a whole group lands in one split,
chosen by a hash of the key, so the split is stable across runs and machines. Groups whose key is
also a title, an illustrative example or a cross-reference line of any code are training text
already and always go to ``examples``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import polars as pl

from naics_ml.data.census import CensusFormatError

SPLITS = ("examples", "train", "validation", "test")
HELD_OUT_SPLITS = frozenset({"validation", "test"})  # never a training text, query or memory
UNASSIGNED_CODE = "******"
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class SplitConfig:
    """Shares of the four splits (they must sum to 1) and the salt of the hash."""

    examples: float = 0.35
    train: float = 0.35
    validation: float = 0.10
    test: float = 0.20
    salt: str = "naics-gemini"

    def __post_init__(self) -> None:
        shares = [self.examples, self.train, self.validation, self.test]
        if any(s < 0 for s in shares) or abs(sum(shares) - 1.0) > 1e-9:
            raise ValueError(f"SplitConfig shares must be >= 0 and sum to 1, got {shares}")


def normalize_text(text: str) -> str:
    """Near-duplicate key: lower case, words only, simple plurals folded, order ignored."""
    words = set()
    for word in _WORD.findall(text.casefold().replace("&", " and ")):
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        words.add(word)
    return " ".join(sorted(words))


def held_out_keys(entries: pl.DataFrame) -> set[str]:
    """The keys (:func:`normalize_text`) of the held-out entries: a text with one of them is
    evaluation text, never a training text, query or memory entry."""
    return set(entries.filter(pl.col("split").is_in(sorted(HELD_OUT_SPLITS)))["key"])


def _bucket(key: str, salt: str) -> float:
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _protected_keys(codes: pl.DataFrame) -> set[str]:
    lines: list[str] = list(codes["title"].drop_nulls())
    for column in ("examples", "excluded"):
        for text in codes[column].drop_nulls():
            lines.extend(text.splitlines())
    return {normalize_text(line) for line in lines if line.strip()}


def check_index_codes(index: pl.DataFrame, codes: pl.DataFrame) -> None:
    """Every index entry (but the unassigned ``******`` ones) names a code of the code table."""
    assigned = index.filter(pl.col("code") != UNASSIGNED_CODE)
    unknown = sorted(set(assigned["code"]) - set(codes["code"]))
    if unknown:
        raise CensusFormatError(
            f"index workbook: {len(unknown)} code(s) not in the codes workbook, e.g. {unknown[:5]}"
        )


def split_index_entries(
    index: pl.DataFrame, codes: pl.DataFrame, config: SplitConfig = SplitConfig()
) -> pl.DataFrame:
    """Assign each index entry a split: code, index, text, key, split (``******`` rows dropped)."""
    entries = index.filter(pl.col("code") != UNASSIGNED_CODE).drop_nulls("text")
    position = dict(zip(codes["code"], codes["index"], strict=True))
    check_index_codes(entries, codes)
    protected = _protected_keys(codes)
    cuts = [config.examples, config.examples + config.train]
    cuts.append(cuts[-1] + config.validation)

    def choose(key: str) -> str:
        if key in protected:
            return "examples"
        u = _bucket(key, config.salt)
        return next((name for name, cut in zip(SPLITS, cuts, strict=False) if u < cut), "test")

    keyed = entries.with_columns(
        pl.col("text").str.strip_chars(),
        pl.col("text").map_elements(normalize_text, pl.String).alias("key"),
    )
    split_of = {key: choose(key) for key in keyed["key"].unique().to_list()}
    return keyed.select(
        "code",
        pl.col("code").replace_strict(position, return_dtype=pl.Int32).alias("index"),
        "text",
        "key",
        pl.col("key").replace_strict(split_of, return_dtype=pl.String).alias("split"),
    )


def split_sizes(entries: pl.DataFrame) -> dict[str, int]:
    """Entries per split, in SPLITS order (zero for an empty split)."""
    counts = dict(entries.group_by("split").len().iter_rows())
    return {name: int(counts.get(name, 0)) for name in SPLITS}
