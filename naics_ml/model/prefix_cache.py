"""The frozen prefix of a list of texts: the hidden states entering the first LoRA layer, real
tokens only, computed once per distinct text (``ChannelEncoder.cached_prefix``) and read by
every channel's adapter."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["PrefixCache"]


@dataclass
class PrefixCache:
    """Hidden states entering the first LoRA layer for a list of texts, real tokens only."""

    flat: Tensor  # (total_tokens, H), cache dtype
    offsets: Tensor  # (n,) start row of each text in ``flat``
    lengths: Tensor  # (n,) tokens per text

    def __len__(self) -> int:
        return len(self.lengths)

    def gather(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Padded (n, L, H) float32 hidden states and (n, L) mask for texts ``ids``."""
        lengths = self.lengths[ids]
        width = int(lengths.max())
        pos = torch.arange(width, device=lengths.device)
        mask = pos.unsqueeze(0) < lengths.unsqueeze(1)
        rows = self.offsets[ids].unsqueeze(1) + torch.minimum(
            pos.unsqueeze(0), lengths.unsqueeze(1) - 1
        )
        return self.flat[rows].float(), mask.long()

    def nbytes(self) -> int:
        return self.flat.numel() * self.flat.element_size()

    def to(self, device: torch.device) -> PrefixCache:
        """The same cache on ``device`` (itself when already there)."""
        return PrefixCache(self.flat.to(device), self.offsets.to(device), self.lengths.to(device))

    def save(self, path: Path | str) -> Path:
        """Write the cache atomically (a torch file of three tensors)."""
        from naics_ml.io import atomic_save_torch

        state = {"flat": self.flat, "offsets": self.offsets, "lengths": self.lengths}
        return atomic_save_torch(state, path)

    @classmethod
    def load(cls, path: Path | str) -> PrefixCache:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return cls(flat=state["flat"], offsets=state["offsets"], lengths=state["lengths"])
