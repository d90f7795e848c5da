"""Triplets on real sectors of 2022, checked against a brute-force reading of the rules."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from naics_ml.data.invariants import check_shard_coverage, check_triplet_order
from naics_ml.data.taxonomy import exclusion_matrix
from naics_ml.triplets.generate import (
    SCHEMA,
    TripletConfig,
    anchor_triplets,
    hardness_of,
    sector_seed,
    sector_triplet_batches,
)
from naics_ml.triplets.shards import build_triplet_shards, sector_dir, shard_sectors

SMALL_SECTORS = ("22", "55")
K = 6
# Exhaustive within-sector triplets of 2022 before exclusions (shared/DESIGN.md), by hardness.
DESIGN_COUNTS = {
    7: 75_747,
    6: 48_471_012,
    5: 25_214_452,
    4: 7_714_636,
    3: 2_306_167,
    2: 2_499_024,
}


@pytest.fixture(scope="module")
def excluded_2022(codes_2022: pl.DataFrame) -> np.ndarray:
    return exclusion_matrix(codes_2022)


@pytest.fixture(scope="module")
def sector_2022(codes_2022: pl.DataFrame) -> np.ndarray:
    return codes_2022["sector"].to_numpy().astype(str)


def generate(sector, distance, excluded, s: str, config: TripletConfig) -> pl.DataFrame:
    members = np.flatnonzero(sector == s)
    batches = list(
        sector_triplet_batches(
            members, members, distance, excluded, config, sector_seed(config.seed, s)
        )
    )
    return pl.from_arrow(pa.Table.from_batches(batches, schema=SCHEMA))


def brute_hardness(diff: float) -> int:
    if diff <= 0.5:
        return 7
    if diff <= 1:
        return 6
    if diff <= 2:
        return 5
    if diff <= 3:
        return 4
    if diff <= 4:
        return 3
    return 2


def brute_force(members: np.ndarray, distance: np.ndarray, excluded: np.ndarray):
    """Rules of issue 2, item 7, written out loop by loop (all but the random cross-sector part)."""
    rows = []
    positives = {}
    for a in members.tolist():
        pos = [p for p in members.tolist() if p != a and not excluded[a, p]]
        positives[a] = pos
        for p in pos:
            d_ap = distance[a, p]
            for n in members.tolist():
                if n == a or excluded[a, n]:
                    continue  # an excluded code is an exclusion negative (hardness 8) instead
                if distance[a, n] > d_ap:
                    rows.append((a, p, n, brute_hardness(float(distance[a, n] - d_ap))))
            for e in np.flatnonzero(excluded[a]).tolist():
                rows.append((a, p, e, 8))
    return sorted(rows), positives


@pytest.mark.parametrize("s", SMALL_SECTORS)
def test_matches_brute_force_on_small_real_sectors(
    s: str, codes_2022, distance_2022, excluded_2022, sector_2022
) -> None:
    config = TripletConfig(cross_sector_k=K, seed=3)
    frame = generate(sector_2022, distance_2022, excluded_2022, s, config)
    members = np.flatnonzero(sector_2022 == s)
    expected, positives = brute_force(members, distance_2022, excluded_2022)

    ranked = frame.filter(pl.col("hardness") >= 2)
    got = sorted(ranked.select("anchor", "positive", "negative", "hardness").rows())
    assert got == expected
    assert Counter(h for *_, h in expected)[8] > 0  # these sectors do have exclusions

    # distances are those of the matrix
    a, p, n = (frame[c].to_numpy().astype(np.int64) for c in ("anchor", "positive", "negative"))
    assert np.array_equal(frame["distance_ap"].to_numpy(), distance_2022[a, p])
    assert np.array_equal(frame["distance_an"].to_numpy(), distance_2022[a, n])

    # cross-sector: K distinct codes of other sectors per (a, p), none excluded by the anchor
    cross = frame.filter(pl.col("hardness") == 1)
    groups = cross.group_by("anchor", "positive").agg(
        pl.col("negative").n_unique().alias("distinct"), pl.len().alias("rows")
    )
    assert set(groups.select("anchor", "positive").rows()) == {
        (anchor, p) for anchor, ps in positives.items() for p in ps
    }
    assert (groups["distinct"] == K).all() and (groups["rows"] == K).all()
    ca, cn = cross["anchor"].to_numpy(), cross["negative"].to_numpy()
    assert (sector_2022[cn] != s).all()
    assert not excluded_2022[ca, cn].any()
    assert (cross["distance_an"] == 10.0).all()
    # every row is one of the three kinds
    assert frame.height == len(expected) + cross.height
    assert set(frame["hardness"].unique()) <= set(range(1, 9))


def test_exclusion_takes_precedence_on_real_codes(
    codes_2022, distance_2022, excluded_2022, sector_2022
) -> None:
    """551112's cross-references exclude 551111, a code of its own sector."""
    position = dict(zip(codes_2022["code"], codes_2022["index"], strict=True))
    a, e = position["551112"], position["551111"]
    assert excluded_2022[a, e]
    frame = generate(sector_2022, distance_2022, excluded_2022, "55", TripletConfig(K, seed=3))
    own = frame.filter(pl.col("anchor") == a)
    assert e not in set(own["positive"])
    as_negative = own.filter(pl.col("negative") == e)
    assert set(as_negative["hardness"]) == {8}
    assert as_negative.height == own["positive"].n_unique()  # once for every positive


@pytest.mark.parametrize("s", SMALL_SECTORS)
def test_rows_sorted_and_deterministic_per_seed(
    s: str, distance_2022, excluded_2022, sector_2022
) -> None:
    first = generate(sector_2022, distance_2022, excluded_2022, s, TripletConfig(K, seed=11))
    again = generate(sector_2022, distance_2022, excluded_2022, s, TripletConfig(K, seed=11))
    other = generate(sector_2022, distance_2022, excluded_2022, s, TripletConfig(K, seed=12))
    assert first.equals(again)
    assert not first.equals(other)
    ranked = pl.col("hardness") >= 2
    assert first.filter(ranked).equals(other.filter(ranked))  # only the random part moves
    keys = first.select("anchor", "positive")
    assert keys.equals(keys.sort("anchor", "positive"))


def test_hardness_bins() -> None:
    diffs = np.array([0.5, 0.51, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 8.0], dtype=np.float32)
    assert hardness_of(diffs).tolist() == [7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2]
    assert hardness_of(diffs).tolist() == [brute_hardness(float(x)) for x in diffs]


def test_whole_2022_counts_before_exclusions(distance_2022, sector_2022) -> None:
    """The within-sector generation with no exclusions reproduces shared/DESIGN.md's
    86,281,038."""
    n = distance_2022.shape[0]
    nothing = np.zeros((n, n), dtype=bool)
    config = TripletConfig(cross_sector_k=0)
    rng = np.random.default_rng(0)
    counts: Counter[int] = Counter()
    positives = 0
    for s in np.unique(sector_2022):
        members = np.flatnonzero(sector_2022 == s)
        others = np.flatnonzero(sector_2022 != s)
        for a in members:
            rows = anchor_triplets(int(a), members, others, distance_2022, nothing, config, rng)
            values, tally = np.unique(rows["hardness"], return_counts=True)
            counts.update(dict(zip(values.tolist(), tally.tolist(), strict=True)))
            positives += members.size - 1
    assert dict(counts) == DESIGN_COUNTS
    assert sum(counts.values()) == 86_281_038
    assert positives == 544_206


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="cross_sector_k"):
        TripletConfig(cross_sector_k=-1)
    with pytest.raises(ValueError):
        TripletConfig(row_group_size=0)


# ---------------------------------------------------------------- shards on disk


def snapshot(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def read_sector(folder: Path, s: str) -> pl.DataFrame:
    parts = sorted(sector_dir(folder, s).glob("part-*.parquet"))
    assert parts
    return pl.concat([pl.read_parquet(p) for p in parts])


def test_shards_build_rebuild_and_survive_a_failure(
    tmp_path: Path, codes_2022, distance_2022, excluded_2022, sector_2022
) -> None:
    out = tmp_path / "triplets"
    config = TripletConfig(cross_sector_k=K, seed=5)
    report = build_triplet_shards(
        codes_2022, out, config, sectors=list(SMALL_SECTORS), workers=2, distance=distance_2022
    )
    assert sorted(p.name for p in out.iterdir()) == ["sector=22", "sector=55"]
    assert shard_sectors(out) == ["22", "55"]
    assert all(f.parent.parent == out and f.suffix == ".parquet" for f in report.files)
    for s in SMALL_SECTORS:
        on_disk = read_sector(out, s)
        assert on_disk.schema == pl.from_arrow(SCHEMA.empty_table()).schema
        # the shard equals the in-process generation, in the same (anchor, positive) order
        assert on_disk.equals(generate(sector_2022, distance_2022, excluded_2022, s, config))
        assert report.rows_by_sector[s] == on_disk.height
    total = pl.concat([read_sector(out, s) for s in SMALL_SECTORS])
    assert report.rows == total.height
    assert report.rows_by_hardness == dict(sorted(Counter(total["hardness"].to_list()).items()))
    assert check_triplet_order(out) == (True, {"violations": 0})
    covered = check_shard_coverage(shard_sectors(out), codes_2022)
    assert not covered[0] and len(covered[1]["missing"]) == 18  # only two sectors built

    # rebuilding 55 alone leaves 22 untouched (same bytes, mtime, inode) and 55 identical
    before = snapshot(out)
    rebuilt = build_triplet_shards(
        codes_2022, out, config, sectors=["55"], workers=1, distance=distance_2022
    )
    after = snapshot(out)
    assert list(rebuilt.rows_by_sector) == ["55"]
    for name, state in before.items():
        if name.startswith("sector=22"):
            assert after[name] == state
    old_55 = {state[2] for n, state in before.items() if n.startswith("sector=55")}
    new_55 = {state[2] for n, state in after.items() if n.startswith("sector=55")}
    assert new_55 and not old_55 & new_55  # every part of 55 was written anew
    assert read_sector(out, "55").equals(
        generate(sector_2022, distance_2022, excluded_2022, "55", config)
    )

    # a unit that fails (more cross-sector negatives than codes) leaves every shard as it was
    before = snapshot(out)
    with pytest.raises(ValueError, match="cross-sector"):
        build_triplet_shards(
            codes_2022,
            out,
            TripletConfig(cross_sector_k=5_000, seed=5),
            sectors=list(SMALL_SECTORS),
            workers=2,
            distance=distance_2022,
        )
    assert snapshot(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["sector=22", "sector=55"]


def test_shards_switch_as_one_set_and_convert_the_older_layout(
    tmp_path: Path, codes_2022, distance_2022
) -> None:
    """``triplets`` links to one complete build (``naics_ml.linked_sets``). A plain folder of
    the older layout is converted, after a sector a killed build had moved aside is put back."""
    out = tmp_path / "triplets"
    config = TripletConfig(cross_sector_k=K, seed=5)
    build_triplet_shards(codes_2022, out, config, list(SMALL_SECTORS), 1, distance_2022)
    first = out.resolve()
    assert out.is_symlink() and first.parent == tmp_path and first.name.startswith("triplets-")
    expected = {s: read_sector(out, s) for s in SMALL_SECTORS}

    # the older layout: sector folders in a plain folder, 55 moved aside by a killed swap
    out.unlink()
    shutil.copytree(first, out)
    shutil.rmtree(first)
    finished = subprocess.Popen(["true"])
    finished.wait()
    retired = out / f".retired.{finished.pid}-0123abcd"
    retired.mkdir()
    (out / "sector=55").rename(retired / "sector=55")
    build_triplet_shards(codes_2022, out, config, ["22"], 1, distance_2022)
    assert out.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == [
        "triplets",
        out.resolve().name,
    ]
    assert sorted(p.name for p in out.iterdir()) == ["sector=22", "sector=55"]
    for s in SMALL_SECTORS:
        assert read_sector(out, s).equals(expected[s])  # 55 carried over from the old folder


def test_unknown_or_malformed_sector_is_rejected(tmp_path: Path, codes_2022) -> None:
    with pytest.raises(ValueError, match="unknown sector"):
        build_triplet_shards(codes_2022, tmp_path, sectors=["32"])
    with pytest.raises(ValueError, match="two digits"):
        sector_dir(tmp_path, "../22")
    assert list(tmp_path.iterdir()) == []


def test_sector_with_trailing_newline_is_rejected(tmp_path: Path) -> None:
    """BUG (naics_ml/triplets/shards.py ``_SECTOR``): ``match`` with ``$`` accepts "22\\n" and
    builds the folder ``sector=22\\n``. Use ``fullmatch``/``\\Z``."""
    with pytest.raises(ValueError, match="two digits"):
        sector_dir(tmp_path, "22\n")


def test_order_check_flags_a_bad_triplet(tmp_path: Path) -> None:
    folder = tmp_path / "sector=22"
    folder.mkdir()
    bad = pl.DataFrame(
        {
            "anchor": [0, 0],
            "positive": [1, 1],
            "negative": [2, 3],
            "hardness": [5, 8],
            "distance_ap": [2.0, 2.0],
            "distance_an": [2.0, 0.5],  # hardness 8 may be closer; hardness 5 may not
        }
    )
    bad.write_parquet(folder / "part-00000.parquet")
    assert check_triplet_order(tmp_path) == (False, {"violations": 1})
