"""Stratified code pairs for the hierarchy loss, and the distortion loss, on the real 2022 codes."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from naics_ml.data.taxonomy import CROSS_SECTOR_DISTANCE
from naics_ml.model.loss import distortion_loss
from naics_ml.training.tree_pairs import TreePairs


@pytest.fixture(scope="module")
def tree_pairs(codes_2022: pl.DataFrame) -> TreePairs:
    return TreePairs.from_codes(codes_2022)


def test_sector_groups_merge_range_sectors(tree_pairs: TreePairs, codes_2022: pl.DataFrame):
    assert len(tree_pairs.sector_members) == 20
    index = dict(zip(codes_2022["code"], codes_2022["index"], strict=True))
    assert tree_pairs.sector_of[index["311111"]] == tree_pairs.sector_of[index["333111"]]
    assert tree_pairs.sector_of[index["111110"]] != tree_pairs.sector_of[index["211120"]]
    assert sum(len(m) for m in tree_pairs.sector_members) == codes_2022.height


def test_neighbours_are_parent_children_and_siblings(
    tree_pairs: TreePairs, codes_2022: pl.DataFrame
):
    index = dict(zip(codes_2022["code"], codes_2022["index"], strict=True))
    code = index["11111"]
    near = tree_pairs.neighbours[
        tree_pairs.neighbour_start[code] : tree_pairs.neighbour_start[code + 1]
    ]
    names = {codes_2022["code"][int(i)] for i in near}
    assert {"1111", "111110", "11112", "11119"} <= names  # parent, child, siblings
    assert all(tree_pairs.tree_distance[code, near] <= 2.0)


def test_sample_is_stratified_and_deterministic(tree_pairs: TreePairs):
    i, j = tree_pairs.sample(np.random.default_rng(7), 3000)
    i2, j2 = tree_pairs.sample(np.random.default_rng(7), 3000)
    assert np.array_equal(i, i2) and np.array_equal(j, j2)
    assert not np.any(i == j)
    t = tree_pairs.tree_distance[i, j]
    kind = np.arange(3000) % 3
    assert np.all(t[kind == 2] <= 2.0)  # tree neighbours
    assert np.mean(t[kind == 1] < CROSS_SECTOR_DISTANCE) > 0.99  # same sector
    # uniform pairs are mostly cross-sector, the strata make small distances common
    assert np.mean(t[kind == 0] == CROSS_SECTOR_DISTANCE) > 0.8
    assert np.mean(t < CROSS_SECTOR_DISTANCE) > 0.6


def test_distortion_loss_is_normalised_stress():
    target = torch.tensor([0.5, 10.0])
    assert float(distortion_loss(target.clone(), target)) == 0.0
    assert float(distortion_loss(torch.zeros(2), target)) == pytest.approx(1.0)
    # absolute errors: being 1 off on the far pair costs as much as on the near one
    near = distortion_loss(torch.tensor([1.5, 10.0]), target)
    far = distortion_loss(torch.tensor([0.5, 11.0]), target)
    assert float(near) == pytest.approx(float(far)) == pytest.approx(1 / 100.25)
