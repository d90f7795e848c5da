"""The NAICS tree and its distances on the real 2022 codes."""

from __future__ import annotations

import networkx as nx
import numpy as np
import polars as pl
import pytest

from naics_ml.data.invariants import check_pairs, check_symmetric, check_triangle
from naics_ml.data.taxonomy import (
    CROSS_SECTOR_DISTANCE,
    build_tree,
    exclusion_matrix,
    matrix_from_pairs,
    pair_table,
    tree_distance_matrix,
    validate_tree,
)

N_2022 = 2_125


@pytest.fixture(scope="module")
def position(codes_2022: pl.DataFrame) -> dict[str, int]:
    return dict(zip(codes_2022["code"], codes_2022["index"], strict=True))


@pytest.fixture(scope="module")
def pairs_2022(codes_2022: pl.DataFrame) -> pl.DataFrame:
    return pair_table(codes_2022)


def d(distance: np.ndarray, position: dict[str, int], a: str, b: str) -> float:
    i, j = position[a], position[b]
    assert distance[i, j] == distance[j, i], (a, b)  # no row-order dependence
    return float(distance[i, j])


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("111110", "11111", 0.5),  # code and parent
        ("111", "11", 0.5),  # subsector and sector
        ("111191", "111199", 2.0),  # siblings
        ("11111", "11112", 2.0),  # siblings one level up
        ("111110", "1111", 1.5),  # code and grandparent
        ("111110", "111", 2.5),  # great-grandparent
        ("111110", "111120", 4.0),  # cousins under 1111
        ("111110", "211120", CROSS_SECTOR_DISTANCE),  # cross-sector
        ("11", "21", CROSS_SECTOR_DISTANCE),
        ("111110", "21", CROSS_SECTOR_DISTANCE),
        # merged sectors: 31-33, 44-45, 48-49 are one sector each
        ("31", "333111", 3.5),
        ("31", "32", None),
        ("311", "333", 2.0),
        ("311111", "333111", 8.0),
        ("44", "455110", 3.5),
        ("441", "455", 2.0),
        ("48", "493110", 3.5),
        ("481", "493", 2.0),
        ("481111", "493110", 8.0),
        ("333111", "445110", CROSS_SECTOR_DISTANCE),
    ],
)
def test_hand_worked_distances(
    distance_2022: np.ndarray, position: dict[str, int], a: str, b: str, expected: float | None
) -> None:
    if expected is None:  # "32" is not a code of its own
        assert b not in position
        return
    assert d(distance_2022, position, a, b) == expected


def test_matrix_shape_and_values(distance_2022: np.ndarray, codes_2022: pl.DataFrame) -> None:
    assert distance_2022.shape == (N_2022, N_2022)
    assert distance_2022.dtype == np.float32
    assert np.array_equal(distance_2022, distance_2022.T)
    assert (np.diag(distance_2022) == 0).all()
    off = distance_2022[~np.eye(N_2022, dtype=bool)]
    allowed = {0.5, 1.5, 2.5, 3.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0}
    assert set(np.unique(off).tolist()) <= allowed
    sector = codes_2022["sector"].to_numpy()
    same = sector[:, None] == sector[None, :]
    assert (distance_2022[~same] == CROSS_SECTOR_DISTANCE).all()
    assert (distance_2022[same] < CROSS_SECTOR_DISTANCE).all()


def test_pair_table_counts(
    pairs_2022: pl.DataFrame, distance_2022: np.ndarray, codes_2022: pl.DataFrame
) -> None:
    assert pairs_2022.height == 2_256_750 == N_2022 * (N_2022 - 1) // 2
    i, j = pairs_2022["i"].to_numpy(), pairs_2022["j"].to_numpy()
    assert (i < j).all()
    key = i.astype(np.int64) * N_2022 + j
    assert (np.diff(key) > 0).all()  # strictly increasing, so every pair once
    within = pairs_2022.filter(pl.col("relation") != "cross_sector").height
    assert within == 272_103
    assert pairs_2022.height - within == 1_984_647
    assert (pairs_2022.filter(pl.col("relation") == "cross_sector")["lca_level"] == 0).all()
    assert np.array_equal(pairs_2022["distance"].to_numpy(), distance_2022[i, j])
    rebuilt = matrix_from_pairs(pairs_2022, N_2022)
    assert np.array_equal(rebuilt, distance_2022)
    assert check_pairs(pairs_2022, N_2022)[0]
    assert check_symmetric(rebuilt, distance_2022)[0]
    assert not check_pairs(pairs_2022.slice(1), N_2022)[0]
    # 544,206 ordered same-sector pairs = twice the unordered ones
    assert 2 * within == 544_206


def test_pair_table_relations(pairs_2022: pl.DataFrame, position: dict[str, int]) -> None:
    def lookup(a: str, b: str) -> dict:
        i, j = sorted((position[a], position[b]))
        found = pairs_2022.filter((pl.col("i") == i) & (pl.col("j") == j))
        assert found.height == 1
        return found.row(0, named=True)

    cases = [
        ("111110", "11111", "parent", 5, 0.5),
        ("111110", "1111", "ancestor", 4, 1.5),
        ("31", "333111", "ancestor", 2, 3.5),
        ("111191", "111199", "sibling", 5, 2.0),
        ("311", "333", "sibling", 2, 2.0),
        ("111110", "111120", "same_sector", 4, 4.0),
        ("111110", "211120", "cross_sector", 0, 10.0),
    ]
    for a, b, relation, lca, distance in cases:
        found = lookup(a, b)
        assert (found["relation"], found["lca_level"], found["distance"]) == (
            relation,
            lca,
            distance,
        ), (a, b)
    assert lookup("111110", "111191")["excluded"]  # 111110's cross-reference names 111191
    assert lookup("111120", "111110")["excluded"]  # either direction counts
    assert not lookup("111110", "211120")["excluded"]


def test_exclusion_flags_match_the_code_table(
    pairs_2022: pl.DataFrame, codes_2022: pl.DataFrame
) -> None:
    expected = set()
    for a, targets in codes_2022.select("index", "excluded_indices").iter_rows():
        expected.update((min(a, t), max(a, t)) for t in targets)
    flagged = pairs_2022.filter(pl.col("excluded")).select("i", "j").rows()
    assert set(flagged) == expected
    matrix = exclusion_matrix(codes_2022)
    assert int(matrix.sum()) == sum(len(t) for t in codes_2022["excluded_indices"])
    assert not matrix.diagonal().any()


def test_distances_agree_with_networkx_lca(
    codes_2022: pl.DataFrame, distance_2022: np.ndarray
) -> None:
    tree = build_tree(codes_2022)
    validate_tree(tree)
    assert tree.number_of_nodes() == N_2022
    assert tree.number_of_edges() == N_2022 - 20
    root = "__root__"
    tree.add_edges_from((root, s) for s in codes_2022.filter(pl.col("level") == 2)["code"])
    depth = nx.shortest_path_length(tree, root)
    codes = codes_2022["code"].to_list()
    sector = codes_2022["sector"].to_numpy()

    rng = np.random.default_rng(2022)
    uniform = rng.integers(0, N_2022, size=(80, 2))
    anchors = rng.integers(0, N_2022, size=200)
    within = [(a, rng.choice(np.flatnonzero(sector == sector[a]))) for a in anchors]
    for a, b in [*map(tuple, uniform), *within]:
        u, v = codes[a], codes[b]
        if u == v:
            continue
        lca = nx.lowest_common_ancestor(tree, u, v)
        if lca == root:
            expected = 10.0
        else:
            expected = depth[u] + depth[v] - 2 * depth[lca] - (0.5 if lca in (u, v) else 0.0)
        assert distance_2022[a, b] == expected, (u, v, lca)


def test_triangle_check_on_real_distances(distance_2022: np.ndarray) -> None:
    passed, details = check_triangle(distance_2022, samples=100_000)
    assert passed, details
    assert details["violations"] == 0


def test_validate_tree_rejects_a_skipped_level(codes_2022: pl.DataFrame) -> None:
    tree = build_tree(codes_2022)
    tree.add_edge("11", "111110")  # a second parent, two levels up
    with pytest.raises(ValueError):
        validate_tree(tree)
    skipping = nx.DiGraph()
    skipping.add_node("11", level=2)
    skipping.add_node("1111", level=4)
    skipping.add_edge("11", "1111")
    with pytest.raises(ValueError, match="skips a level"):
        validate_tree(skipping)


def test_2017_distances_merge_range_sectors(codes_2017: pl.DataFrame) -> None:
    distance = tree_distance_matrix(codes_2017)
    position = dict(zip(codes_2017["code"], codes_2017["index"], strict=True))
    assert np.array_equal(distance, distance.T)
    assert d(distance, position, "31", "336111") == 3.5
    assert d(distance, position, "44", "454110") == 3.5
    assert d(distance, position, "48", "493110") == 3.5
    assert d(distance, position, "311111", "336111") == 8.0
