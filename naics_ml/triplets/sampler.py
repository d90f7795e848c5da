"""The triplet sampler: curriculum batches streamed from the parquet shards.

The 2022 shards hold ~120M triplet rows (sector 31 alone tens of millions), so the triplet
sampler never materialises them. It reads one parquet row group at a time (only the columns it
needs), filters rows by the curriculum (anchor/positive level, positive distance, hardness
bucket, optional data-parallel rank), groups the rows of each (anchor, positive) pair (rows are
sorted by pair, so groups are contiguous) and draws the pair's k negatives immediately. Only the
drawn pairs enter a bounded shuffle buffer from which batches are taken.

Mixing: every epoch visits each sector's row groups in a fresh random order, picks the next
sector at random with probability proportional to its unread rows (so sectors interleave
evenly through the epoch) and shuffles pairs through the buffer. A pair split across two row
groups is stashed and completed when its sector's epoch ends (a handful of pairs per sector).

At the end of an epoch the buffer is drained (all but < batch_size pairs), so every pair is
drawn once per epoch.

Negatives per pair: ``CurriculumSpec.quotas`` (round(k * share), rounding difference to the
largest share). Within a bucket they are drawn without replacement; a bucket with fewer rows
than its quota is used in full and then cycled again in a new random order. A bucket the pair
has no rows in gives its share to the spec's other buckets (in proportion to their shares); a
pair with no row in any bucket never appears.

Small curricula (2022: 01_easy has 739 pairs, 02_medium 8,250) would re-read all shards every
few dozen batches; after the first epoch their filtered rows are therefore kept in memory when
they fit in ``cache_max_rows`` (7 bytes a row), and later epochs re-draw negatives from there.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from naics_ml.triplets.curriculum import CurriculumSpec
from naics_ml.triplets.pair_filter import KEY_SHIFT, PairFilter, Pairs, check_schema
from naics_ml.triplets.prefetch import prefetched
from naics_ml.triplets.query_sampler import check_batching
from naics_ml.triplets.shards import shard_sectors


@dataclass(frozen=True)
class TripletBatch:
    """B (anchor, positive) pairs with k negatives each; all int64 code indices."""

    anchor: np.ndarray  # (B,)
    positive: np.ndarray  # (B,)
    negatives: np.ndarray  # (B, k)
    hardness: np.ndarray  # (B, k) hardness bucket of each negative

    def __len__(self) -> int:
        return int(self.anchor.shape[0])


@dataclass(frozen=True)
class _Unit:
    """One readable chunk of a sector: a parquet row group, or its cached filtered rows."""

    sector: str
    rows: int
    path: Path | None = None
    row_group: int = -1
    cached: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None


@dataclass
class _Cache:
    """Filtered rows of the first epoch, per sector; dropped once they exceed the budget."""

    max_rows: int
    units: dict[str, list[_Unit]]
    rows: int = 0
    overflow: bool = False

    def add(
        self, sector: str, a: np.ndarray, p: np.ndarray, neg: np.ndarray, h: np.ndarray
    ) -> None:
        if self.overflow or not a.size:
            return
        self.rows += a.size
        if self.rows > self.max_rows:
            self.overflow = True
            self.units.clear()
        else:
            self.units.setdefault(sector, []).append(_Unit(sector, a.size, cached=(a, p, neg, h)))


def discover_shards(
    triplets_dir: Path, sectors: Sequence[str] | None = None
) -> dict[str, list[Path]]:
    """Sector -> its part files in part order (``sector=NN/part-<i>.parquet``)."""
    triplets_dir = Path(triplets_dir)
    if not triplets_dir.is_dir():
        raise FileNotFoundError(f"triplets directory {str(triplets_dir)!r} does not exist")
    found: dict[str, list[Path]] = {}
    for sector in shard_sectors(triplets_dir):
        if sectors is not None and sector not in sectors:
            continue
        parts = []
        for path in (triplets_dir / f"sector={sector}").glob("part-*.parquet"):
            index = path.stem.removeprefix("part-")
            if not index.isdigit():
                raise ValueError(f"{path}: shard name must be part-<integer>.parquet")
            parts.append((int(index), path))
        found[sector] = [path for _, path in sorted(parts)]
    if sectors is not None:
        missing = sorted(set(sectors) - set(found))
        if missing:
            raise FileNotFoundError(f"{triplets_dir}: no shards for sector(s) {missing}")
    if not found:
        raise FileNotFoundError(f"{triplets_dir}: no sector=<NN>/part-<i>.parquet shards found")
    return found


class _Buffer:
    """Fixed-width pair store with O(B) random removal (swap-with-tail)."""

    def __init__(self, k: int, capacity: int = 1024) -> None:
        self.k, self.n = k, 0
        self._alloc(capacity)

    def _alloc(self, capacity: int) -> None:
        old = getattr(self, "arrays", None)
        self.arrays = (
            np.empty(capacity, np.int16),
            np.empty(capacity, np.int16),
            np.empty((capacity, self.k), np.int16),
            np.empty((capacity, self.k), np.int8),
        )
        if old is not None:
            for new_arr, old_arr in zip(self.arrays, old, strict=True):
                new_arr[: self.n] = old_arr[: self.n]

    def add(self, pairs: Pairs) -> None:
        m = pairs.anchor.size
        if self.n + m > self.arrays[0].shape[0]:
            self._alloc(max(2 * self.arrays[0].shape[0], self.n + m))
        src = (pairs.anchor, pairs.positive, pairs.negatives, pairs.hardness)
        for arr, values in zip(self.arrays, src, strict=True):
            arr[self.n : self.n + m] = values
        self.n += m

    def take(self, size: int, rng: np.random.Generator) -> TripletBatch:
        idx = rng.choice(self.n, size=size, replace=False)
        out = [arr[idx].astype(np.int64) for arr in self.arrays]
        tail = np.arange(self.n - size, self.n)
        movers = tail[~np.isin(tail, idx)]
        holes = idx[idx < self.n - size]
        for arr in self.arrays:
            arr[holes] = arr[movers]
        self.n -= size
        return TripletBatch(*out)


class TripletSampler:
    """Endless (or ``n_batches``-long) stream of curriculum ``TripletBatch``es; seeded.

    Args:
        triplets_dir: folder with ``sector=<NN>/part-<i>.parquet`` shards.
        code_level: level (2..6) of every code index, e.g. ``codes["level"].to_numpy()``.
        spec: the curriculum stage.
        batch_size: pairs per batch.
        seed: same seed, files and arguments -> same batches.
        n_batches: stop after this many batches (``None`` = forever, reshuffled each epoch).
        buffer_size: pairs held for shuffling (bounds memory together with one row group).
        rank, world_size: data-parallel split; ranks see disjoint (anchor, positive) pairs.
        cache_max_rows: keep the curriculum's filtered rows in memory after the first epoch
            when there are at most this many (0 disables).
        sectors: restrict to these sectors (default: all found).
        prefetch: batches prepared ahead in a background thread, so shard reading overlaps the
            training step (0 = produce synchronously). The order is unchanged either way.
    """

    def __init__(
        self,
        triplets_dir: Path,
        code_level: np.ndarray,
        spec: CurriculumSpec,
        batch_size: int,
        seed: int,
        *,
        n_batches: int | None = None,
        buffer_size: int = 8192,
        rank: int = 0,
        world_size: int = 1,
        cache_max_rows: int = 20_000_000,
        sectors: Sequence[str] | None = None,
        prefetch: int = 8,
    ) -> None:
        check_batching(batch_size, rank, world_size)
        self.spec, self.batch_size, self.seed = spec, batch_size, seed
        self.n_batches = n_batches
        self.buffer_size = max(buffer_size, batch_size)
        self.cache_max_rows = cache_max_rows
        self.prefetch = prefetch
        self._filter = PairFilter(code_level, spec, rank, world_size)
        self._units: dict[str, list[_Unit]] = {}
        for sector, paths in discover_shards(Path(triplets_dir), sectors).items():
            units = []
            for path in paths:
                pf = pq.ParquetFile(path)
                check_schema(path, pf)
                meta = pf.metadata
                units += [
                    _Unit(sector, meta.row_group(i).num_rows, path, i)
                    for i in range(meta.num_row_groups)
                ]
            self._units[sector] = units
        self.epoch = 0  # completed epochs
        self.rows_read = 0  # parquet rows read (before filtering)
        self.pairs_drawn = 0  # pairs whose negatives were drawn
        self.cached = False  # later epochs served from memory

    def __iter__(self) -> Iterator[TripletBatch]:
        if self.prefetch > 0:
            return prefetched(self._batches(), self.prefetch)
        return self._batches()

    def _batches(self) -> Iterator[TripletBatch]:
        rng = np.random.default_rng([self.seed, 0x5A11])
        buffer = _Buffer(self.spec.k_negatives)
        produced, epoch = 0, 0
        units = self._units
        while True:
            cache = _Cache(self.cache_max_rows, {}) if epoch == 0 and self.cache_max_rows else None
            pairs_before = self.pairs_drawn
            epoch_rng = np.random.default_rng([self.seed, epoch])
            for pairs in self._epoch_pairs(units, epoch_rng, cache):
                buffer.add(pairs)
                # the fill target grows with every batch: quick first batch, full mixing later
                while buffer.n >= min(self.buffer_size, self.batch_size * (2 + produced)):
                    yield buffer.take(self.batch_size, rng)
                    produced += 1
                    if self.n_batches is not None and produced >= self.n_batches:
                        return
            # drain at the epoch's end so every pair is drawn once per epoch (the < batch_size
            # leftover is carried into the next epoch)
            while buffer.n >= self.batch_size:
                yield buffer.take(self.batch_size, rng)
                produced += 1
                if self.n_batches is not None and produced >= self.n_batches:
                    return
            if self.pairs_drawn == pairs_before:
                raise ValueError(
                    f"curriculum {self.spec.name!r}: no eligible (anchor, positive) pairs in the "
                    "triplet shards (check positive_levels, max_positive_distance, buckets)"
                )
            if cache is not None and not cache.overflow:
                units = cache.units
                self.cached = True
            epoch += 1
            self.epoch = epoch

    def _epoch_pairs(
        self,
        units: dict[str, list[_Unit]],
        rng: np.random.Generator,
        cache: _Cache | None,
    ) -> Iterator[Pairs]:
        """One pass over all units: sectors interleaved, row groups in random order.

        Filtered rows read from disk are offered to ``cache`` (if given).
        """
        sectors = sorted(units)
        queues = [list(rng.permutation(len(units[s]))) for s in sectors]
        remaining = np.array([sum(u.rows for u in units[s]) for s in sectors], dtype=np.float64)
        stash: list[dict[int, list[tuple[np.ndarray, ...]]]] = [{} for _ in sectors]
        while remaining.sum() > 0:
            si = int(rng.choice(len(sectors), p=remaining / remaining.sum()))
            unit = units[sectors[si]][queues[si].pop()]
            remaining[si] = remaining[si] - unit.rows if queues[si] else 0
            if unit.cached is not None:
                a, p, neg, h = unit.cached
            else:
                a, p, neg, h = self._filter.filter(unit.path, unit.row_group)
                self.rows_read += unit.rows
                if cache is not None:
                    cache.add(unit.sector, a, p, neg, h)
            pairs = self._complete_groups(a, p, neg, h, stash[si], rng, unit)
            if pairs is not None:
                yield pairs
            if not queues[si] and stash[si]:
                pairs = self._flush_stash(stash[si], rng)
                if pairs is not None:
                    yield pairs

    def _complete_groups(
        self,
        a: np.ndarray,
        p: np.ndarray,
        neg: np.ndarray,
        h: np.ndarray,
        stash: dict[int, list[tuple[np.ndarray, ...]]],
        rng: np.random.Generator,
        unit: _Unit,
    ) -> Pairs | None:
        """Draw for the groups wholly inside this chunk; stash the first and last group."""
        if a.size == 0:
            return None
        key = a.astype(np.int64) * KEY_SHIFT + p
        step = np.diff(key)
        if (step < 0).any():
            where = unit.path if unit.path is not None else f"sector {unit.sector} (cached)"
            raise ValueError(
                f"{where} row group {unit.row_group}: rows not sorted by (anchor, positive)"
            )
        starts = np.concatenate(([0], np.flatnonzero(step) + 1))
        ends = np.append(starts[1:], a.size)
        for g in {0, starts.size - 1}:
            sl = slice(starts[g], ends[g])
            stash.setdefault(int(key[starts[g]]), []).append((a[sl], p[sl], neg[sl], h[sl]))
        if starts.size <= 2:
            return None
        lo, hi = ends[0], starts[-1]
        pairs = self._filter.draw(a[lo:hi], p[lo:hi], neg[lo:hi], h[lo:hi], starts[1:-1] - lo, rng)
        self.pairs_drawn += pairs.anchor.size
        return pairs

    def _flush_stash(
        self, stash: dict[int, list[tuple[np.ndarray, ...]]], rng: np.random.Generator
    ) -> Pairs | None:
        """Complete the pairs that were split across row groups (end of a sector's epoch)."""
        parts = [stash[key] for key in sorted(stash)]
        stash.clear()
        cols = [np.concatenate([piece[c] for group in parts for piece in group]) for c in range(4)]
        sizes = np.array([sum(piece[0].size for piece in group) for group in parts])
        starts = np.cumsum(sizes) - sizes
        pairs = self._filter.draw(*cols, starts, rng)
        self.pairs_drawn += pairs.anchor.size
        return pairs if pairs.anchor.size else None


def count_eligible_pairs(
    triplets_dir: Path,
    code_level: np.ndarray,
    spec: CurriculumSpec,
    *,
    rank: int = 0,
    world_size: int = 1,
    sectors: Sequence[str] | None = None,
) -> dict[str, int]:
    """Sector -> number of (anchor, positive) pairs the sampler can draw for ``spec``.

    A full scan of the shards (one row group at a time); use it for epoch sizes and logging,
    not on the training path.
    """
    pair_filter = PairFilter(code_level, spec, rank, world_size)
    counts: dict[str, int] = {}
    for sector, paths in discover_shards(Path(triplets_dir), sectors).items():
        keys = []
        for path in paths:
            pf = pq.ParquetFile(path)
            check_schema(path, pf)
            for i in range(pf.metadata.num_row_groups):
                a, p, _, _ = pair_filter.filter(path, i)
                keys.append(np.unique(a.astype(np.int64) * KEY_SHIFT + p))
        counts[sector] = int(np.unique(np.concatenate(keys)).size) if keys else 0
    return counts
