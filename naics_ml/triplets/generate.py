"""Hardness-labelled triplets for one sector, generated anchor by anchor and streamed to parquet.

For an anchor a of sector s:
- positives: every other code p of s that a's cross-references do not exclude;
- within-sector negatives, exhaustive: every n of s (not a, not excluded by a) with d(a,n) > d(a,p),
  hardness from d(a,n) - d(a,p): <=0.5 -> 7, <=1 -> 6, <=2 -> 5, <=3 -> 4, <=4 -> 3, more -> 2;
- exclusion negatives: every code a excludes (any sector), for every positive, hardness 8;
- cross-sector negatives, hardness 1: K codes drawn without replacement from the other sectors
  (never one a excludes) for each (a, p), seeded per sector so one shard rebuilds identically.
Rows are sorted by (anchor, positive) and hold only integers and distances, never strings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HARDNESS_THRESHOLDS = np.array([0.5, 1.0, 2.0, 3.0, 4.0], dtype=np.float32)
EXCLUSION_HARDNESS = 8
CROSS_SECTOR_HARDNESS = 1
SCHEMA = pa.schema(
    [
        ("anchor", pa.int16()),
        ("positive", pa.int16()),
        ("negative", pa.int16()),
        ("hardness", pa.int8()),
        ("distance_ap", pa.float32()),
        ("distance_an", pa.float32()),
    ]
)


@dataclass(frozen=True)
class TripletConfig:
    """How many cross-sector negatives per (anchor, positive), the seed, and parquet settings."""

    cross_sector_k: int = 64
    seed: int = 42
    row_group_size: int = 1_000_000
    compression: str = "zstd"

    def __post_init__(self) -> None:
        if self.cross_sector_k < 0:
            raise ValueError(
                f"TripletConfig.cross_sector_k must be >= 0, got {self.cross_sector_k}"
            )
        if self.row_group_size < 1:
            raise ValueError("TripletConfig.row_group_size must be >= 1")


def hardness_of(distance_diff: np.ndarray) -> np.ndarray:
    """Within-sector hardness 7..2 from d(a,n) - d(a,p) > 0."""
    steps = np.searchsorted(HARDNESS_THRESHOLDS, distance_diff, side="left")
    return (7 - steps).astype(np.int8)


def sector_seed(seed: int, sector: str) -> int:
    """A stable per-sector seed, so shards do not depend on which other shards are built."""
    digest = hashlib.blake2b(f"{seed}:{sector}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _ragged_arange(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Concatenation of arange(start, stop) for each pair, without a Python loop."""
    lengths = stops - starts
    offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(lengths.sum()) - offsets + np.repeat(starts, lengths)


def _sample_without_replacement(
    rng: np.random.Generator, rows: int, k: int, pool: np.ndarray, forbidden: np.ndarray
) -> np.ndarray:
    """(rows, k) draws from ``pool``, distinct per row, never where ``forbidden`` (by code)."""
    if k > pool.size - forbidden[pool].sum():
        raise ValueError(f"cannot draw {k} distinct cross-sector negatives from {pool.size} codes")
    draws = pool[rng.integers(0, pool.size, size=(rows, k))]
    while True:
        ordered = np.sort(draws, axis=1)
        repeated = np.zeros_like(draws, dtype=bool)
        repeated[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
        bad = repeated | forbidden[ordered]
        if not bad.any():
            return ordered
        ordered[bad] = pool[rng.integers(0, pool.size, size=int(bad.sum()))]
        draws = ordered


def anchor_triplets(
    anchor: int,
    members: np.ndarray,
    others: np.ndarray,
    distance: np.ndarray,
    excluded: np.ndarray,
    config: TripletConfig,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """All triplets of one anchor as column arrays sorted by positive (then hardness group)."""
    row = distance[anchor]
    not_excluded = ~excluded[anchor]
    positives = members[(members != anchor) & not_excluded[members]]
    # Within-sector negatives: candidates sorted by distance; for each positive, the suffix farther.
    candidates = members[(members != anchor) & not_excluded[members]]
    candidates = candidates[np.argsort(row[candidates], kind="stable")]
    cand_dist = row[candidates]
    d_ap = row[positives]
    starts = np.searchsorted(cand_dist, d_ap, side="right")
    lengths = candidates.size - starts
    within_neg = candidates[_ragged_arange(starts, np.full_like(starts, candidates.size))]
    within_pos = np.repeat(positives, lengths)
    within_hard = hardness_of(row[within_neg] - row[within_pos])

    targets = np.flatnonzero(excluded[anchor])
    excl_pos = np.repeat(positives, targets.size)
    excl_neg = np.tile(targets, positives.size)

    k = config.cross_sector_k
    cross_pos = np.repeat(positives, k)
    cross_neg = _sample_without_replacement(rng, positives.size, k, others, excluded[anchor])
    parts = [
        (within_pos, within_neg, within_hard),
        (excl_pos, excl_neg, np.full(excl_pos.size, EXCLUSION_HARDNESS, np.int8)),
        (cross_pos, cross_neg.ravel(), np.full(cross_pos.size, CROSS_SECTOR_HARDNESS, np.int8)),
    ]
    pos = np.concatenate([p for p, _, _ in parts])
    neg = np.concatenate([n for _, n, _ in parts])
    hard = np.concatenate([h for _, _, h in parts])
    order = np.argsort(pos, kind="stable")
    pos, neg, hard = pos[order], neg[order], hard[order]
    return {
        "anchor": np.full(pos.size, anchor, np.int16),
        "positive": pos.astype(np.int16),
        "negative": neg.astype(np.int16),
        "hardness": hard,
        "distance_ap": row[pos].astype(np.float32),
        "distance_an": row[neg].astype(np.float32),
    }


def sector_triplet_batches(
    sector_members: np.ndarray,
    anchors: np.ndarray,
    distance: np.ndarray,
    excluded: np.ndarray,
    config: TripletConfig,
    seed: int,
    min_rows: int = 500_000,
) -> Iterator[pa.RecordBatch]:
    """Record batches of >= ``min_rows`` rows (but the last) for some anchors of a sector."""
    n = distance.shape[0]
    in_sector = np.zeros(n, dtype=bool)
    in_sector[sector_members] = True
    others = np.flatnonzero(~in_sector)
    pending: list[dict[str, np.ndarray]] = []
    rows = 0
    for anchor in anchors:
        rng = np.random.default_rng([seed, int(anchor)])
        columns = anchor_triplets(
            int(anchor), sector_members, others, distance, excluded, config, rng
        )
        pending.append(columns)
        rows += columns["anchor"].size
        if rows >= min_rows:
            yield _to_batch(pending)
            pending, rows = [], 0
    if pending:
        yield _to_batch(pending)


def _to_batch(parts: list[dict[str, np.ndarray]]) -> pa.RecordBatch:
    arrays = [pa.array(np.concatenate([p[name] for p in parts])) for name in SCHEMA.names]
    return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)


def write_triplet_part(
    path: Path,
    sector_members: np.ndarray,
    anchors: np.ndarray,
    distance: np.ndarray,
    excluded: np.ndarray,
    config: TripletConfig,
    seed: int,
) -> dict[int, int]:
    """Write one parquet part for some anchors of a sector; returns rows per hardness."""
    counts: dict[int, int] = {}
    # Dictionary encoding costs more time than it saves space on these int16 columns.
    with pq.ParquetWriter(
        path, SCHEMA, compression=config.compression, use_dictionary=False
    ) as writer:
        for batch in sector_triplet_batches(
            sector_members, anchors, distance, excluded, config, seed
        ):
            writer.write_batch(batch, row_group_size=config.row_group_size)
            values, tally = np.unique(batch.column("hardness").to_numpy(), return_counts=True)
            for value, count in zip(values.tolist(), tally.tolist(), strict=True):
                counts[value] = counts.get(value, 0) + count
    return counts
