"""Streaming triplet sampler and query sampler on small hand-built shards."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from naics_ml.triplets.curriculum import CurriculumSpec, load_curriculum
from naics_ml.triplets.generate import SCHEMA
from naics_ml.triplets.query_sampler import QuerySampler
from naics_ml.triplets.sampler import (
    TripletBatch,
    TripletSampler,
    count_eligible_pairs,
    discover_shards,
)


def _tree() -> tuple[list[str], list[int | None], list[int]]:
    """Three sectors, each 2 -> 2 -> 2 -> (1 or 2) -> (1..3) codes deep; codes, parents, levels."""
    codes: list[str] = []
    parents: list[int | None] = []

    def add(code: str, parent: int | None) -> int:
        codes.append(code)
        parents.append(parent)
        return len(codes) - 1

    for s, sector in enumerate(("11", "21", "31")):
        si = add(sector, None)
        for a in range(1, 3):
            i3 = add(f"{sector}{a}", si)
            for b in range(1, 3):
                i4 = add(f"{sector}{a}{b}", i3)
                for c in range(1, 2 + (a + b + s) % 2):
                    i5 = add(f"{sector}{a}{b}{c}", i4)
                    for d in range(1 + (a * b + c + s) % 3):
                        add(f"{sector}{a}{b}{c}{d}", i5)
    levels = [len(c) for c in codes]
    return codes, parents, levels


def _distances(parents: list[int | None], levels: list[int]) -> np.ndarray:
    n = len(parents)

    def chain(i: int) -> list[int]:
        out = [i]
        while parents[out[-1]] is not None:
            out.append(parents[out[-1]])
        return out

    chains = [chain(i) for i in range(n)]
    dist = np.zeros((n, n), dtype=np.float32)
    for i, j in itertools.product(range(n), range(n)):
        if i == j:
            continue
        if chains[i][-1] != chains[j][-1]:
            dist[i, j] = 10.0
            continue
        lca = next(x for x in chains[i] if x in chains[j])
        d = (levels[i] - levels[lca]) + (levels[j] - levels[lca])
        dist[i, j] = d - 0.5 if lca in (i, j) else d
    return dist


def _hardness(gap: float) -> int:
    for limit, h in ((0.5, 7), (1, 6), (2, 5), (3, 4), (4, 3)):
        if gap <= limit:
            return h
    return 2


def _write_shards(
    root: Path, row_group_size: int = 1_000_000, rows_per_part: int | None = None, seed: int = 0
) -> tuple[np.ndarray, dict]:
    """Write shards in the agreed layout; returns code levels and {(a, p): [(neg, h), ...]}."""
    codes, parents, levels = _tree()
    dist = _distances(parents, levels)
    sector_of = [c[:2] for c in codes]
    rng = np.random.default_rng(seed)
    truth: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for sector in sorted(set(sector_of)):
        inside = [i for i in range(len(codes)) if sector_of[i] == sector]
        outside = [i for i in range(len(codes)) if sector_of[i] != sector]
        rows = []
        for a, p in itertools.product(inside, inside):
            if a == p:
                continue
            for n in inside:
                if n not in (a, p) and dist[a, n] > dist[a, p]:
                    rows.append((a, p, n, _hardness(dist[a, n] - dist[a, p])))
            for n in rng.choice(outside, size=3, replace=False):
                rows.append((a, p, int(n), 1))
            if a % 4 == 0:  # a few anchors have exclusion negatives
                rows.append((a, p, int(outside[a % len(outside)]), 8))
        rows.sort(key=lambda r: (r[0], r[1]))
        arr = np.array(rows, dtype=np.int64)
        for a, p, n, h in rows:
            truth.setdefault((a, p), []).append((n, h))
        table = pa.table(
            {
                "anchor": arr[:, 0].astype(np.int16),
                "positive": arr[:, 1].astype(np.int16),
                "negative": arr[:, 2].astype(np.int16),
                "hardness": arr[:, 3].astype(np.int8),
                "distance_ap": dist[arr[:, 0], arr[:, 1]],
                "distance_an": dist[arr[:, 0], arr[:, 2]],
            },
            schema=SCHEMA,
        )
        folder = root / f"sector={sector}"
        folder.mkdir(parents=True)
        step = rows_per_part or table.num_rows
        for part, start in enumerate(range(0, table.num_rows, step)):
            pq.write_table(
                table.slice(start, step),
                folder / f"part-{part}.parquet",
                row_group_size=row_group_size,
            )
    truth["_dist"] = dist  # type: ignore[index]
    return np.array(levels, dtype=np.int8), truth


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, dict]:
    root = tmp_path_factory.mktemp("triplets")
    levels, truth = _write_shards(root)
    return root, levels, truth


@pytest.fixture(scope="module")
def tiny_groups(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, dict]:
    """Same data, but row groups of 40 rows (pairs often span two) over several part files."""
    root = tmp_path_factory.mktemp("triplets_small_groups")
    levels, truth = _write_shards(root, row_group_size=40, rows_per_part=700)
    return root, levels, truth


def _eligible(truth: dict, levels: np.ndarray, spec: CurriculumSpec) -> dict:
    dist = truth["_dist"]
    out = {}
    for key, rows in truth.items():
        if key == "_dist":
            continue
        a, p = key
        if levels[a] not in spec.positive_levels or levels[p] not in spec.positive_levels:
            continue
        if dist[a, p] > spec.max_positive_distance:
            continue
        kept = [(n, h) for n, h in rows if h in spec.negative_buckets]
        if kept:
            out[key] = kept
    return out


def _check_batch(batch: TripletBatch, spec: CurriculumSpec, eligible: dict, size: int) -> None:
    k = spec.k_negatives
    assert batch.anchor.shape == batch.positive.shape == (size,)
    assert batch.negatives.shape == batch.hardness.shape == (size, k)
    for arr in (batch.anchor, batch.positive, batch.negatives, batch.hardness):
        assert arr.dtype == np.int64
    for i in range(size):
        key = (int(batch.anchor[i]), int(batch.positive[i]))
        assert key in eligible, f"pair {key} outside the curriculum"
        rows = set(eligible[key])
        drawn = list(zip(batch.negatives[i].tolist(), batch.hardness[i].tolist(), strict=True))
        assert all(r in rows for r in drawn), f"negatives of {key} not from its rows"
        available = {h for _, h in rows}
        expected = {h: q for h, q in spec.quotas(available).items() if q}
        assert dict(Counter(h for _, h in drawn)) == expected
        # without replacement while the bucket has enough rows
        for h, q in expected.items():
            n_rows = sum(1 for _, hh in rows if hh == h)
            got = [n for n, hh in drawn if hh == h]
            assert len(set(got)) == min(q, n_rows)


SECTOR_OF = [code[:2] for code in _tree()[0]]

SPECS = {
    "easy": CurriculumSpec("e", (6,), 2.0, {1: 0.5, 2: 0.5}, k_negatives=4),
    "medium": CurriculumSpec("m", (5, 6), 3.0, {1: 0.2, 2: 0.2, 5: 0.3, 6: 0.3}, k_negatives=8),
    "hard": load_curriculum("03_hard"),
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_batches_respect_curriculum(shards, name: str) -> None:
    root, levels, truth = shards
    spec = SPECS[name]
    eligible = _eligible(truth, levels, spec)
    assert len(eligible) >= 10
    sampler = TripletSampler(root, levels, spec, batch_size=8, seed=1, n_batches=40)
    batches = list(sampler)
    assert len(batches) == 40
    for batch in batches:
        _check_batch(batch, spec, eligible, 8)


def test_filtering_by_level_and_distance(shards) -> None:
    root, levels, truth = shards
    dist = truth["_dist"]
    spec = CurriculumSpec("lv", (4, 5), 0.5, {1: 0.5, 5: 0.25, 6: 0.25}, k_negatives=4)
    pairs = set()
    for batch in TripletSampler(root, levels, spec, batch_size=4, seed=0, n_batches=30):
        pairs |= set(zip(batch.anchor.tolist(), batch.positive.tolist(), strict=True))
    assert pairs == set(_eligible(truth, levels, spec))
    for a, p in pairs:
        assert {levels[a], levels[p]} <= {4, 5}
        assert dist[a, p] == 0.5  # parent/child only


def test_epochs_cover_every_pair_evenly_and_mix_sectors(shards) -> None:
    root, levels, truth = shards
    spec = SPECS["medium"]
    eligible = _eligible(truth, levels, spec)
    n_epochs, size = 6, 8
    sampler = TripletSampler(
        root, levels, spec, batch_size=size, seed=3, n_batches=n_epochs * len(eligible) // size
    )
    seen: Counter = Counter()
    sector_mix = []
    for batch in sampler:
        keys = list(zip(batch.anchor.tolist(), batch.positive.tolist(), strict=True))
        seen.update(keys)
        sector_mix.append(len({SECTOR_OF[a] for a, _ in keys}))
    assert set(seen) == set(eligible)
    assert max(seen.values()) - min(seen.values()) <= 2
    assert sampler.epoch >= n_epochs - 1
    assert np.mean(sector_mix) > 1.5  # batches mix sectors


def test_counts_match_truth(shards, tiny_groups) -> None:
    for root, levels, truth in (shards, tiny_groups):
        for spec in SPECS.values():
            eligible = _eligible(truth, levels, spec)
            counts = count_eligible_pairs(root, levels, spec)
            assert set(counts) == {"11", "21", "31"}
            assert sum(counts.values()) == len(eligible)


def test_deterministic_by_seed(shards) -> None:
    root, levels, _ = shards
    spec = SPECS["hard"]

    def run(seed: int) -> list[np.ndarray]:
        out = []
        for b in TripletSampler(root, levels, spec, batch_size=16, seed=seed, n_batches=25):
            out += [b.anchor, b.positive, b.negatives, b.hardness]
        return out

    first, again, other = run(5), run(5), run(6)
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(first, other, strict=True))


def test_prefetch_thread_keeps_order_and_stops(shards) -> None:
    root, levels, _ = shards
    spec = SPECS["medium"]
    sync = TripletSampler(root, levels, spec, batch_size=8, seed=4, n_batches=60, prefetch=0)
    ahead = TripletSampler(root, levels, spec, batch_size=8, seed=4, n_batches=60, prefetch=3)
    for x, y in zip(sync, ahead, strict=True):
        assert np.array_equal(x.negatives, y.negatives) and np.array_equal(x.anchor, y.anchor)
    it = iter(TripletSampler(root, levels, spec, batch_size=8, seed=4, prefetch=2))
    next(it)
    assert any(t.name == "triplet-sampler-prefetch" for t in threading.enumerate())
    it.close()
    deadline = time.monotonic() + 5
    while any(t.name == "triplet-sampler-prefetch" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "prefetch thread did not stop"
        time.sleep(0.05)


def test_many_small_row_groups_and_parts(tiny_groups) -> None:
    root, levels, truth = tiny_groups
    assert len(discover_shards(root)["31"]) > 10
    assert pq.ParquetFile(discover_shards(root)["31"][0]).metadata.num_row_groups > 10
    for spec in SPECS.values():
        eligible = _eligible(truth, levels, spec)
        sampler = TripletSampler(
            root,
            levels,
            spec,
            batch_size=4,
            seed=2,
            n_batches=2 * len(eligible) // 4,
            buffer_size=16,
            cache_max_rows=0,
        )
        seen = set()
        for batch in sampler:
            _check_batch(batch, spec, eligible, 4)
            seen |= set(zip(batch.anchor.tolist(), batch.positive.tolist(), strict=True))
        # pairs split across row groups are reassembled: each appears with its full bucket set
        assert seen == set(eligible)
        assert not sampler.cached


def test_cache_stops_rereading_small_curricula(shards) -> None:
    root, levels, truth = shards
    spec = SPECS["easy"]
    n_pairs = len(_eligible(truth, levels, spec))
    total_rows = sum(
        pq.ParquetFile(p).metadata.num_rows for ps in discover_shards(root).values() for p in ps
    )
    cached = TripletSampler(root, levels, spec, batch_size=4, seed=0, n_batches=5 * n_pairs // 4)
    list(cached)
    assert cached.cached and cached.rows_read == total_rows
    streamed = TripletSampler(
        root, levels, spec, batch_size=4, seed=0, n_batches=5 * n_pairs // 4, cache_max_rows=10
    )
    list(streamed)
    assert not streamed.cached and streamed.rows_read >= 4 * total_rows


def test_rank_split_is_disjoint_and_complete(shards) -> None:
    root, levels, truth = shards
    spec = SPECS["hard"]
    per_rank = [count_eligible_pairs(root, levels, spec, rank=r, world_size=2) for r in (0, 1)]
    total = count_eligible_pairs(root, levels, spec)
    assert {s: per_rank[0][s] + per_rank[1][s] for s in total} == total
    seen = []
    for rank in (0, 1):
        n = sum(per_rank[rank].values())
        sampler = TripletSampler(
            root, levels, spec, batch_size=8, seed=0, n_batches=2 * n // 8, rank=rank, world_size=2
        )
        seen.append({(a, p) for b in sampler for a, p in zip(b.anchor, b.positive, strict=True)})
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(_eligible(truth, levels, spec))


def test_infinite_by_default_keeps_cycling_through_every_pair(shards) -> None:
    root, levels, truth = shards
    eligible = set(_eligible(truth, levels, SPECS["easy"]))
    it = iter(TripletSampler(root, levels, SPECS["easy"], batch_size=4, seed=0))
    seen: Counter = Counter()
    for _ in range(500):  # far more than one epoch: the sampler must start over, not stop
        batch = next(it)
        assert len(batch.anchor) == 4
        seen.update(zip(batch.anchor.tolist(), batch.positive.tolist(), strict=True))
    assert set(seen) == eligible
    assert 2 * len(eligible) <= 2000 and min(seen.values()) >= 2  # every pair again


def test_errors(tmp_path: Path, shards) -> None:
    root, levels, _ = shards
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TripletSampler(tmp_path / "nope", levels, SPECS["easy"], 4, 0)
    with pytest.raises(FileNotFoundError, match="no sector"):
        TripletSampler(tmp_path, levels, SPECS["easy"], 4, 0)
    bad = tmp_path / "bad" / "sector=11"
    bad.mkdir(parents=True)
    pq.write_table(pa.table({"anchor": pa.array([1], pa.int16())}), bad / "part-0.parquet")
    with pytest.raises(ValueError, match=r"part-0\.parquet.*lacks column"):
        TripletSampler(tmp_path / "bad", levels, SPECS["easy"], 4, 0)
    with pytest.raises(ValueError, match="code_level does not match"):
        next(iter(TripletSampler(root, levels[:5], SPECS["hard"], 4, 0)))
    nothing = CurriculumSpec("none", (2,), 0.4, {1: 1.0})
    with pytest.raises(ValueError, match="no eligible"):
        next(iter(TripletSampler(root, levels, nothing, 4, 0)))


def test_query_sampler_epochs_and_ranks() -> None:
    code_index = np.arange(50) % 7
    batches = list(QuerySampler(code_index, batch_size=10, seed=0, n_batches=10))
    assert all(b.shape == (10,) and b.dtype == np.int64 for b in batches)
    first_epoch = np.concatenate(batches[:5])
    assert sorted(first_epoch.tolist()) == list(range(50))
    assert not np.array_equal(first_epoch, np.concatenate(batches[5:]))  # reshuffled
    again = list(QuerySampler(code_index, batch_size=10, seed=0, n_batches=10))
    assert all(np.array_equal(x, y) for x, y in zip(batches, again, strict=True))
    ranks = [
        list(QuerySampler(code_index, 5, 0, n_batches=5, rank=r, world_size=2)) for r in (0, 1)
    ]
    joined = np.concatenate([np.concatenate(r) for r in ranks])
    assert sorted(joined.tolist()) == list(range(50))
    with pytest.raises(ValueError, match="rank"):
        QuerySampler(code_index, 5, 0, rank=2, world_size=2)
