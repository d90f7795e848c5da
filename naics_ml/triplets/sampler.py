"""Streaming samplers: curriculum triplet batches from the parquet shards, and query batches.

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

import math
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from naics_ml.triplets.curriculum import CurriculumSpec
from naics_ml.triplets.shards import shard_sectors

TRIPLET_COLUMNS = ("anchor", "positive", "negative", "hardness", "distance_ap")
_NUMPY = {
    pa.int8(): np.dtype(np.int8),
    pa.int16(): np.dtype(np.int16),
    pa.int32(): np.dtype(np.int32),
    pa.int64(): np.dtype(np.int64),
    pa.float32(): np.dtype(np.float32),
    pa.float64(): np.dtype(np.float64),
}
_KEY_SHIFT = 1 << 16  # anchor and positive are int16 code indices


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


@dataclass
class _Pairs:
    anchor: np.ndarray
    positive: np.ndarray
    negatives: np.ndarray
    hardness: np.ndarray


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


def _check_schema(path: Path, pf: pq.ParquetFile) -> None:
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
    key = anchor.astype(np.uint64) * np.uint64(_KEY_SHIFT) + positive.astype(np.uint64)
    mixed = (key * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)
    return (mixed % np.uint64(world_size)) == np.uint64(rank)


class _PairFilter:
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
    ) -> _Pairs:
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
        return _Pairs(
            anchor=a[first],
            positive=p[first],
            negatives=neg[rows].reshape(-1, k),
            hardness=h[rows].reshape(-1, k),
        )


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

    def add(self, pairs: _Pairs) -> None:
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
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        self.spec, self.batch_size, self.seed = spec, batch_size, seed
        self.n_batches = n_batches
        self.buffer_size = max(buffer_size, batch_size)
        self.cache_max_rows = cache_max_rows
        self.prefetch = prefetch
        self._filter = _PairFilter(code_level, spec, rank, world_size)
        self._units: dict[str, list[_Unit]] = {}
        for sector, paths in discover_shards(Path(triplets_dir), sectors).items():
            units = []
            for path in paths:
                pf = pq.ParquetFile(path)
                _check_schema(path, pf)
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
            return _prefetched(self._batches(), self.prefetch)
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
    ) -> Iterator[_Pairs]:
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
    ) -> _Pairs | None:
        """Draw for the groups wholly inside this chunk; stash the first and last group."""
        if a.size == 0:
            return None
        key = a.astype(np.int64) * _KEY_SHIFT + p
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
    ) -> _Pairs | None:
        """Complete the pairs that were split across row groups (end of a sector's epoch)."""
        parts = [stash[key] for key in sorted(stash)]
        stash.clear()
        cols = [np.concatenate([piece[c] for group in parts for piece in group]) for c in range(4)]
        sizes = np.array([sum(piece[0].size for piece in group) for group in parts])
        starts = np.cumsum(sizes) - sizes
        pairs = self._filter.draw(*cols, starts, rng)
        self.pairs_drawn += pairs.anchor.size
        return pairs if pairs.anchor.size else None


@dataclass(frozen=True)
class _Failure:
    error: BaseException


def _prefetched(source: Iterator[TripletBatch], depth: int) -> Iterator[TripletBatch]:
    """Run ``source`` in a daemon thread, ``depth`` items ahead; errors re-raise here.

    Closing (or dropping) the returned generator stops the thread at its next item.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in source:
                if not put(item):
                    return
            put(done)
        except BaseException as exc:
            put(_Failure(exc))

    def consume() -> Iterator[TripletBatch]:
        thread = threading.Thread(target=work, name="triplet-sampler-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = items.get()
                if item is done:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            stop.set()

    return consume()


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
    pair_filter = _PairFilter(code_level, spec, rank, world_size)
    counts: dict[str, int] = {}
    for sector, paths in discover_shards(Path(triplets_dir), sectors).items():
        keys = []
        for path in paths:
            pf = pq.ParquetFile(path)
            _check_schema(path, pf)
            for i in range(pf.metadata.num_row_groups):
                a, p, _, _ = pair_filter.filter(path, i)
                keys.append(np.unique(a.astype(np.int64) * _KEY_SHIFT + p))
        counts[sector] = int(np.unique(np.concatenate(keys)).size) if keys else 0
    return counts


class QuerySampler:
    """Shuffled epochs of training-query ids (positions into the train query list).

    ``code_index[i]`` is the code of query ``i`` (its positive). Batches are always full; an
    epoch's leftover ids start the next epoch's first batch. With ``world_size`` > 1 each rank
    gets a disjoint slice of every batch-sized chunk.
    """

    def __init__(
        self,
        code_index: np.ndarray,
        batch_size: int,
        seed: int,
        *,
        n_batches: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.code_index = np.asarray(code_index, dtype=np.int64)
        if self.code_index.ndim != 1 or self.code_index.size == 0:
            raise ValueError("code_index must be a non-empty 1-d array")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        self.batch_size, self.seed, self.n_batches = batch_size, seed, n_batches
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[np.ndarray]:
        rng = np.random.default_rng([self.seed, 0x0E7])
        n, chunk = self.code_index.size, self.batch_size * self.world_size
        pending = np.empty(0, dtype=np.int64)
        produced = 0
        while True:
            while pending.size < chunk:
                pending = np.concatenate((pending, rng.permutation(n)))
            ids, pending = pending[:chunk], pending[chunk:]
            yield ids[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
            produced += 1
            if self.n_batches is not None and produced >= self.n_batches:
                return
