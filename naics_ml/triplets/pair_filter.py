"""One curriculum's reading of a row group: the rows it keeps (anchor and positive level,
positive distance, hardness bucket, data-parallel rank), grouped by (anchor, positive), and the
negatives it draws for each pair (``CurriculumSpec.quotas``; module doc of
:mod:`naics_ml.triplets.sampler`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from naics_ml.triplets.curriculum import CurriculumSpec

__all__ = ["KEY_SHIFT", "PairFilter", "Pairs", "check_schema"]

TRIPLET_COLUMNS = ("anchor", "positive", "negative", "hardness", "distance_ap")
_NUMPY = {
    pa.int8(): np.dtype(np.int8),
    pa.int16(): np.dtype(np.int16),
    pa.int32(): np.dtype(np.int32),
    pa.int64(): np.dtype(np.int64),
    pa.float32(): np.dtype(np.float32),
    pa.float64(): np.dtype(np.float64),
}
KEY_SHIFT = 1 << 16  # anchor and positive are int16 code indices


@dataclass
class Pairs:
    anchor: np.ndarray
    positive: np.ndarray
    negatives: np.ndarray
    hardness: np.ndarray


def _column(table: pa.Table, name: str) -> np.ndarray:
    """Zero-copy numpy view of a null-free numeric column.

    ``ChunkedArray.to_numpy`` imports pandas on first use (~0.5 s), which would dominate the
    time to the first batch.
    """
    column = table.column(name)
    dtype = _NUMPY.get(column.type)
    if dtype is None or column.null_count:
        return column.to_numpy()
    arrays = [
        np.frombuffer(c.buffers()[1], dtype=dtype, count=len(c), offset=c.offset * dtype.itemsize)
        for c in column.chunks
        if len(c)
    ]
    if not arrays:
        return np.empty(0, dtype=dtype)
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def check_schema(path: Path, pf: pq.ParquetFile) -> None:
    names = set(pf.schema_arrow.names)
    missing = [c for c in TRIPLET_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"{path}: triplet shard lacks column(s) {missing}")


def _quota_table(spec: CurriculumSpec) -> np.ndarray:
    """(2**n_buckets, n_buckets) negatives per bucket for every pattern of non-empty buckets."""
    hardness = spec.hardness
    n = len(hardness)
    table = np.zeros((1 << n, n), dtype=np.int64)
    for mask in range(1, 1 << n):
        available = [h for i, h in enumerate(hardness) if mask >> i & 1]
        quotas = spec.quotas(available)
        table[mask] = [quotas[h] for h in hardness]
    return table


def _rank_mask(anchor: np.ndarray, positive: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Deterministic, well-spread assignment of pairs to data-parallel ranks."""
    key = anchor.astype(np.uint64) * np.uint64(KEY_SHIFT) + positive.astype(np.uint64)
    mixed = (key * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)
    return (mixed % np.uint64(world_size)) == np.uint64(rank)


class PairFilter:
    """Row filter and per-pair negative drawing for one curriculum."""

    def __init__(
        self, code_level: np.ndarray, spec: CurriculumSpec, rank: int, world_size: int
    ) -> None:
        level = np.asarray(code_level)
        self.level_ok = np.isin(level, spec.positive_levels)
        self.max_distance = spec.max_positive_distance
        self.bucket_of = np.full(256, -1, dtype=np.int64)
        for i, h in enumerate(spec.hardness):
            self.bucket_of[h] = i
        self.n_buckets = len(spec.hardness)
        self.k = spec.k_negatives
        self.quota = _quota_table(spec)
        self.rank, self.world_size = rank, world_size
        self._files: dict[Path, pq.ParquetFile] = {}

    def filter(self, path: Path, row_group: int) -> tuple[np.ndarray, ...]:
        if path not in self._files:
            self._files[path] = pq.ParquetFile(path)
        table = self._files[path].read_row_group(row_group, columns=list(TRIPLET_COLUMNS))
        a, p, h, d = (_column(table, c) for c in ("anchor", "positive", "hardness", "distance_ap"))
        n_codes = self.level_ok.shape[0]
        if a.size and (max(int(a.max()), int(p.max())) >= n_codes or min(a.min(), p.min()) < 0):
            raise ValueError(
                f"{path} row group {row_group}: code index outside 0..{n_codes - 1} "
                "(code_level does not match these shards)"
            )
        if a.size and (h.min() < 1 or h.max() > 8):
            raise ValueError(f"{path} row group {row_group}: hardness outside 1..8")
        mask = (self.bucket_of[h] >= 0) & self.level_ok[a] & self.level_ok[p]
        if not math.isinf(self.max_distance):
            mask &= d <= self.max_distance
        if self.world_size > 1:
            mask &= _rank_mask(a, p, self.rank, self.world_size)
        idx = np.flatnonzero(mask)
        neg = _column(table, "negative")[idx]
        return a[idx], p[idx], neg, h[idx]

    def draw(
        self,
        a: np.ndarray,
        p: np.ndarray,
        neg: np.ndarray,
        h: np.ndarray,
        starts: np.ndarray,
        rng: np.random.Generator,
    ) -> Pairs:
        """Draw k negatives for every complete group; ``starts`` = first row of each group."""
        n_groups = starts.size
        nb, k = self.n_buckets, self.k
        lengths = np.diff(np.append(starts, a.size))
        seg = np.repeat(np.arange(n_groups), lengths) * nb + self.bucket_of[h]
        counts = np.bincount(seg, minlength=n_groups * nb)
        pattern = (counts.reshape(n_groups, nb) > 0) @ (1 << np.arange(nb))
        quota = self.quota[pattern].ravel()
        # rows sorted by segment, random order inside each segment
        tiebreak = rng.integers(0, 1 << 20, size=a.size, dtype=np.int64)
        order = np.argsort((seg << 20) | tiebreak, kind="stable")
        seg_start = np.cumsum(counts) - counts
        draw_seg = np.repeat(np.arange(quota.size), quota)
        within = np.arange(draw_seg.size) - np.repeat(np.cumsum(quota) - quota, quota)
        # first `count` draws without replacement, further ones cycle through the bucket again
        rows = order[seg_start[draw_seg] + within % counts[draw_seg]]
        keep = pattern > 0
        first = starts[keep]
        return Pairs(
            anchor=a[first],
            positive=p[first],
            negatives=neg[rows].reshape(-1, k),
            hardness=h[rows].reshape(-1, k),
        )
