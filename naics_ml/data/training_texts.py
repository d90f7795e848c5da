"""Labelled training queries beyond the index entries, closer to what firms write about themselves.

Index entries are short official phrasings ("Carpentry contractors"); users type sentences and
lists ("General contracting services, renovations, carpentry and painting ..."). A model trained
only on the former forgets how to place the latter. This module adds four kinds of labelled
queries for six-digit codes, each with its own ``split`` name so a stage can pick them
(``TrainConfig.query_splits``) and the entry memory records where each came from:

- ``crossref``: the subject of each cross-reference, for the code it points to
  ("Establishments primarily engaged in manufacturing frozen whipped toppings--are classified in
  U.S. Industry 311412" -> "manufacturing frozen whipped toppings" for 311412); lines naming
  several six-digit codes are ambiguous and skipped;
- ``description``: each sentence of a six-digit code's own description, its boilerplate lead
  ("This industry comprises establishments primarily engaged in") removed;
- ``composite``: description-length lists made of three of a code's training phrasings;
- ``realtext``: labelled real firm texts free to train on (the training part of the Maryland
  directory, ``naics_ml.data.realtext``), first code only.

The held-out rule holds: a text whose normalized key is that of a ``validation`` or ``test``
index entry is dropped, so no held-out phrasing becomes a training text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import polars as pl

from naics_ml.data.codes import referenced_codes, six_digit_codes, six_digit_mask
from naics_ml.data.index_split import held_out_keys, normalize_text

EXTRA_SPLITS = ("crossref", "description", "composite", "realtext")
QUERY_SPLITS = ("train", "examples", *EXTRA_SPLITS)  # what trains the query path by default
_CLASSIFIED = re.compile(r"\s*(?:--\s*)?(?:are|is) classified\b", re.IGNORECASE)
_LEAD = re.compile(
    r"^(?:this (?:u\.s\. )?industry comprises |this industry group comprises )?"
    r"(?:establishments|units|companies)?\s*(?:(?:primarily|known as|that are)\s+)*"
    r"(?:engaged|operating|responsible)\s+in\s+",
    re.IGNORECASE,
)
_SENTENCE = re.compile(r"(?<=[a-z0-9)])\.\s+(?=[A-Z])")
MIN_WORDS = 3


def strip_lead(text: str) -> str:
    """The text without the Census's "establishments primarily engaged in" boilerplate."""
    return _LEAD.sub("", text.strip()).strip(" .;,-")


def crossref_queries(codes: pl.DataFrame) -> list[tuple[str, str]]:
    """(text, target six-digit code) for every cross-reference line naming one six-digit code."""
    six = set(six_digit_codes(codes))
    out = []
    for block in codes["excluded"].drop_nulls().to_list():
        for line in block.splitlines():
            parts = _CLASSIFIED.split(line, maxsplit=1)
            targets = {c for c in referenced_codes(line) if c in six}
            if len(parts) < 2 or len(targets) != 1:
                continue
            text = strip_lead(parts[0])
            if len(text.split()) >= MIN_WORDS:
                out.append((text, targets.pop()))
    return out


def description_queries(codes: pl.DataFrame) -> list[tuple[str, str]]:
    """(sentence, code) for each sentence of every six-digit code's description."""
    out = []
    six = codes.sort("index").filter(six_digit_mask(codes)).drop_nulls("description")
    for code, description in six.select("code", "description").iter_rows():
        for sentence in _SENTENCE.split(description):
            text = strip_lead(sentence)
            if len(text.split()) >= MIN_WORDS:
                out.append((text, code))
    return out


def composite_queries(
    entries: pl.DataFrame, splits: tuple[str, ...], per_code: int = 3, seed: int = 0
) -> list[tuple[str, str]]:
    """One list of ``per_code`` training phrasings per six-digit code that has that many."""
    rng = np.random.default_rng(seed)
    rows = entries.filter(pl.col("split").is_in(list(splits))).sort("code", "text")
    out = []
    for code, texts in rows.group_by("code", maintain_order=True).agg("text").iter_rows():
        if len(texts) >= per_code:
            chosen = rng.choice(len(texts), size=per_code, replace=False)
            out.append((", ".join(texts[i] for i in sorted(chosen)), code))
    return out


def training_queries(
    codes: pl.DataFrame,
    entries: pl.DataFrame,
    realtext_train: pl.DataFrame | None = None,
    seed: int = 0,
) -> pl.DataFrame:
    """The extra queries as index-entry rows (code, index, text, key, split), leak-free.

    ``entries`` are the split index entries (their train/examples phrasings make the
    composites; their validation/test keys are excluded); ``realtext_train`` has ``text`` and
    ``codes`` (``naics_ml.data.realtext.load_labelled_texts``).
    """
    kinds = {
        "crossref": crossref_queries(codes),
        "description": description_queries(codes),
        "composite": composite_queries(entries, ("train", "examples"), seed=seed),
        "realtext": []
        if realtext_train is None
        else [(t, c[0]) for t, c in realtext_train.select("text", "codes").iter_rows()],
    }
    held_out = held_out_keys(entries)
    position = dict(zip(codes["code"], codes["index"], strict=True))
    rows = [
        (code, position[code], text, normalize_text(text), split)
        for split, pairs in kinds.items()
        for text, code in dict.fromkeys(pairs)  # exact duplicates once
        if code in position
    ]
    frame = pl.DataFrame(
        rows,
        schema={
            "code": pl.String,
            "index": pl.Int32,
            "text": pl.String,
            "key": pl.String,
            "split": pl.String,
        },
        orient="row",
    )
    return frame.filter(~pl.col("key").is_in(list(held_out)) & (pl.col("key") != ""))


def training_lines(codes: pl.DataFrame, queries: pl.DataFrame, splits: Sequence[str]) -> list[str]:
    """Every text line a stage trains on: the code channels' lines (titles, descriptions,
    examples, exclusions) and the queries of ``splits`` (for the strict test subset)."""
    lines = [t for column in ("title", "description") for t in codes[column].drop_nulls()]
    for column in ("examples", "excluded"):
        lines += [line for text in codes[column].drop_nulls() for line in text.splitlines()]
    return lines + queries.filter(pl.col("split").is_in(list(splits)))["text"].to_list()
