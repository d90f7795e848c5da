"""Code pairs with their tree distances, sampled for the hierarchy (distortion) loss.

The triplet InfoNCE only orders a positive before its negatives; nothing in it says how far
apart two sectors, two cousins or a parent and its child should be, so the Spearman correlation
with the tree and the reconstruction MAP stay low. The hierarchy loss asks every sampled pair's
Lorentz distance to be ``scale * tree distance`` (normalised stress). Uniformly drawn pairs are
88 % cross-sector (2022), so pairs are stratified: one third uniform over all codes, one third
within the sector, one third tree neighbours (parent, child or sibling), which are what
reconstruction MAP and parent@1 measure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from naics_ml.data.taxonomy import tree_distance_matrix

__all__ = ["TreePairs"]


@dataclass(frozen=True)
class TreePairs:
    """Index structure for stratified pair sampling over one code table (``index`` 0..n-1)."""

    tree_distance: np.ndarray  # (n, n) float32
    sector_members: tuple[np.ndarray, ...]  # per sector group: its code indices
    sector_of: np.ndarray  # (n,) position in sector_members
    neighbour_start: np.ndarray  # (n + 1,) CSR offsets into neighbours
    neighbours: np.ndarray  # parent, children and siblings of each code

    @classmethod
    def from_codes(cls, codes: pl.DataFrame) -> TreePairs:
        codes = codes.sort("index")
        if codes["index"].to_list() != list(range(codes.height)):
            raise ValueError("the code table's index column must be 0..n-1")
        tree = tree_distance_matrix(codes)
        # the table's sector column already folds 31-33, 44-45 and 48-49 onto one sector
        _, sector_of = np.unique(codes["sector"].to_numpy(), return_inverse=True)
        sector_of = sector_of.astype(np.int64)
        members = [np.flatnonzero(sector_of == s) for s in range(int(sector_of.max()) + 1)]
        n = codes.height
        parent = codes["parent_index"].fill_null(-1).to_numpy().astype(np.int64)
        children: list[list[int]] = [[] for _ in range(n)]
        for child, p in enumerate(parent):
            if p >= 0:
                children[p].append(child)
        lists = []
        for i in range(n):
            near = list(children[i])
            if parent[i] >= 0:
                near.append(int(parent[i]))
                near.extend(s for s in children[parent[i]] if s != i)
            lists.append(np.asarray(sorted(set(near)), dtype=np.int64))
        start = np.zeros(n + 1, dtype=np.int64)
        start[1:] = np.cumsum([len(x) for x in lists])
        flat = np.concatenate(lists) if start[-1] else np.zeros(0, dtype=np.int64)
        return cls(tree, tuple(members), sector_of, start, flat)

    @property
    def num_codes(self) -> int:
        return len(self.sector_of)

    def sample(self, rng: np.random.Generator, m: int) -> tuple[np.ndarray, np.ndarray]:
        """``m`` pairs (i, j), i != j: a third uniform, a third same-sector, a third tree
        neighbours (strata fall back to uniform where a code has no such partner)."""
        n = self.num_codes
        i = rng.integers(0, n, m)
        j = rng.integers(0, n, m)
        kind = np.arange(m) % 3
        for row in np.flatnonzero(kind == 1):
            group = self.sector_members[self.sector_of[i[row]]]
            if len(group) > 1:
                j[row] = group[rng.integers(0, len(group))]
        lo, hi = self.neighbour_start[i], self.neighbour_start[i + 1]
        has = (kind == 2) & (hi > lo)
        pick = lo[has] + (rng.random(int(has.sum())) * (hi[has] - lo[has])).astype(np.int64)
        j[has] = self.neighbours[pick]
        same = i == j
        j[same] = (j[same] + 1 + rng.integers(0, n - 1, int(same.sum()))) % n
        return i, j
