"""Channel slots made of several texts: a code's examples are read line by line and averaged.

A code's illustrative examples and index entries are many short, independent phrases. Encoded
as one concatenated text they are truncated and blurred into one long sequence, and a query (a
single phrase) looks nothing like it. Encoded one line at a time and averaged, the channel is the
centroid of query-like phrases: with the frozen base model alone, validation top-1 rises from
0.45 to 0.63. ``TextGroups`` stores the ragged lists of text ids (CSR) that make each slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def split_lines(text: str) -> list[str]:
    """The non-blank lines of a channel text, stripped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass(frozen=True)
class TextGroups:
    """Group g holds text ids ``members[offsets[g]:offsets[g + 1]]`` (never empty)."""

    offsets: Tensor  # (G + 1,) long
    members: Tensor  # (M,) long

    @classmethod
    def build(cls, groups: Sequence[Sequence[int]]) -> TextGroups:
        """On the CPU (``to`` moves them)."""
        cpu = torch.device("cpu")
        sizes = torch.tensor([len(g) for g in groups], dtype=torch.long, device=cpu)
        if len(sizes) and int(sizes.min()) == 0:
            raise ValueError("a text group must hold at least one text")
        offsets = torch.zeros(len(groups) + 1, dtype=torch.long, device=cpu)
        offsets[1:] = torch.cumsum(sizes, 0)
        members = torch.tensor([t for g in groups for t in g], dtype=torch.long, device=cpu)
        return cls(offsets=offsets, members=members)

    def to(self, device: torch.device) -> TextGroups:
        return TextGroups(offsets=self.offsets.to(device), members=self.members.to(device))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def sizes(self, group_ids: Tensor) -> Tensor:
        return self.offsets[group_ids + 1] - self.offsets[group_ids]

    def gather(self, group_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Member text ids of ``group_ids`` (flattened) and each member's position in it."""
        sizes = self.sizes(group_ids)
        device = group_ids.device
        owner = torch.repeat_interleave(torch.arange(len(group_ids), device=device), sizes)
        first = torch.cumsum(sizes, 0) - sizes
        rank = torch.arange(int(sizes.sum()), device=device) - first[owner]
        return self.members[self.offsets[group_ids][owner] + rank], owner


def group_mean(vectors: Tensor, owner: Tensor, num_groups: int) -> Tensor:
    """L2-normalised mean of the member vectors (M, H) of each of ``num_groups`` groups.

    A one-member group returns its (unit) vector unchanged, so single-text slots are exact.
    """
    sums = torch.zeros(num_groups, vectors.shape[-1], dtype=vectors.dtype, device=vectors.device)
    sums = sums.index_add(0, owner, vectors)
    several = torch.bincount(owner, minlength=num_groups).unsqueeze(1) > 1
    return torch.where(several, F.normalize(sums, dim=-1), sums)
