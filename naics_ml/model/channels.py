"""The four text channels of a code, and the code table's texts for each."""

from __future__ import annotations

import hashlib
import json

import polars as pl

__all__ = [
    "CHANNELS",
    "QUERY_CHANNEL",
    "channel_fingerprint",
    "code_channel_texts",
    "code_texts",
]

CHANNELS = ("title", "description", "excluded", "examples")
QUERY_CHANNEL = "examples"  # free text goes through this channel's adapter


def code_channel_texts(codes: pl.DataFrame) -> dict[str, list[str | None]]:
    """The code table -> ``NaicsModel.prepare`` channel texts, row i = code with ``index`` i.

    Missing or blank texts become None (masked by the model, never encoded as "").
    """
    frame = codes.sort("index")
    if frame["index"].to_list() != list(range(frame.height)):
        raise ValueError("the code table's index column must be 0..n-1")
    out: dict[str, list[str | None]] = {}
    for channel in CHANNELS:
        values = frame[channel].to_list()
        out[channel] = [v if isinstance(v, str) and v.strip() else None for v in values]
    return out


def channel_fingerprint(channel_texts: dict[str, list[str | None]]) -> str:
    """SHA-256 of the code channel texts (channel order fixed): "prepared for this table"."""
    digest = hashlib.sha256()
    for channel in CHANNELS:
        digest.update(json.dumps([channel, list(channel_texts[channel])]).encode())
    return digest.hexdigest()


def code_texts(codes: pl.DataFrame) -> list[str]:
    """One text per code, title plus description (``index`` order; a null description leaves
    the title): what a single-text encoder reads (the baselines, the base model's vote)."""
    codes = codes.sort("index")
    return [
        title if not desc else f"{title}. {desc}"
        for title, desc in zip(
            codes["title"].to_list(), codes["description"].to_list(), strict=True
        )
    ]
