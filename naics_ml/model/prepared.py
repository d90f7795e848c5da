"""The texts a model was prepared for: every distinct code channel text and query text, their
frozen prefix (computed once, shared by every channel's adapter) and the slots that say which
texts make up each code's channels and each query.

A *slot* is one channel of one code, or one query: the ids of the texts it averages (one text,
or the lines of a line channel). ``code_slots[i, c]`` is code i's slot for channel c (-1 =
missing); ``query_slots[q]`` is query q's slot. Texts are deduplicated across channels, codes
and queries: the prefix does not depend on the adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from naics_ml.model.channels import CHANNELS, QUERY_CHANNEL, channel_fingerprint
from naics_ml.model.encoder import ChannelEncoder
from naics_ml.model.prefix_cache import PrefixCache
from naics_ml.model.text_groups import TextGroups, split_lines

__all__ = ["CACHE_DTYPES", "PreparedTexts", "query_rows"]

CACHE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class PreparedTexts:
    """The prepared texts of a model (see the module doc); ``text_ids`` maps a text to its row
    in ``cache``, ``groups`` a slot to the text ids it averages."""

    texts: list[str]
    text_ids: dict[str, int]
    groups: TextGroups
    code_slots: Tensor  # (n_codes, C) slot ids, -1 = missing
    query_slots: Tensor  # (n_queries,) slot ids
    cache: PrefixCache
    code_fingerprint: str  # channel_fingerprint of the prepared codes

    @classmethod
    def build(
        cls,
        channel_texts: dict[str, list[str | None]],
        queries: Sequence[str],
        encoder: ChannelEncoder,
        line_channels: Sequence[str],
        cache: tuple[str, Path | str | None],
        device: torch.device,
    ) -> PreparedTexts:
        """Slots and prefix for ``channel_texts`` (``[c][i]``: code i's text for channel c,
        None = missing) and ``queries``, made on ``device``; ``cache`` is the prefix's dtype
        name and the folder that keeps it between calls (None: computed here)."""
        missing = set(CHANNELS) - set(channel_texts)
        if missing:
            raise ValueError(f"channel_texts lacks channels {sorted(missing)}")
        sizes = {len(channel_texts[c]) for c in CHANNELS}
        if len(sizes) != 1:
            raise ValueError(f"channel text lists differ in length: {sizes}")
        if any(not isinstance(q, str) for q in queries):
            raise ValueError("queries must be strings")
        n_codes = sizes.pop()
        index: dict[str, int] = {}
        groups: dict[tuple[int, ...], int] = {}

        def slot_id(texts: list[str]) -> int:
            if not texts:
                return -1
            key = tuple(index.setdefault(t, len(index)) for t in texts)
            return groups.setdefault(key, len(groups))

        def code_slot(channel: str, text: str | None) -> int:
            if text is None:
                return -1
            return slot_id(split_lines(text) if channel in line_channels else [text])

        code_slots = [[code_slot(c, channel_texts[c][i]) for c in CHANNELS] for i in range(n_codes)]
        query_slots = [slot_id([q]) for q in queries]
        dtype, cache_dir = cache
        texts = list(index)
        return cls(
            texts=texts,
            text_ids=index,
            groups=TextGroups.build(list(groups)).to(device),
            code_slots=torch.tensor(code_slots, dtype=torch.long, device=device).reshape(
                n_codes, len(CHANNELS)
            ),
            query_slots=torch.tensor(query_slots, dtype=torch.long, device=device),
            cache=encoder.cached_prefix(texts, CACHE_DTYPES[dtype], cache_dir).to(device),
            code_fingerprint=channel_fingerprint(channel_texts),
        )

    def to(self, device: torch.device) -> PreparedTexts:
        return replace(
            self,
            groups=self.groups.to(device),
            code_slots=self.code_slots.to(device),
            query_slots=self.query_slots.to(device),
            cache=self.cache.to(device),
        )

    @property
    def num_codes(self) -> int:
        return len(self.code_slots)

    @property
    def num_queries(self) -> int:
        return len(self.query_slots)


def query_rows(slots: Tensor) -> Tensor:
    """Slot rows (n, C) of queries: the examples channel's adapter reads them, the rest masked."""
    rows = torch.full((len(slots), len(CHANNELS)), -1, dtype=torch.long, device=slots.device)
    rows[:, CHANNELS.index(QUERY_CHANNEL)] = slots
    return rows
