"""Hierarchical decoding: the level heads, their cache, the blend they enter and its tuning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from naics_ml.evaluation.blend_tuning import tune_blend
from naics_ml.inference.blend import ScoreParts
from naics_ml.inference.entry_memory import MemoryConfig
from naics_ml.inference.level_heads import (
    LEVELS,
    fit_level_heads,
    level_labels,
    load_level_heads,
    save_level_heads,
)

SIX = np.array(["111110", "111120", "112111", "311111", "311119", "423110"])


def clustered(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit vectors around one centre per candidate column: each level is learnable."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(SIX), 16))
    column = np.repeat(np.arange(len(SIX)), 30)
    x = centres[column] + 0.3 * rng.normal(size=(len(column), 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return torch.as_tensor(x), torch.as_tensor(column)


def test_level_labels_merge_sectors_and_cut_prefixes() -> None:
    assert level_labels(SIX, "sector").tolist() == ["11", "11", "11", "31", "31", "42"]
    assert level_labels(["331110", "452210"], "sector").tolist() == ["31", "44"]
    assert level_labels(SIX, "subsector").tolist() == ["111", "111", "112", "311", "311", "423"]
    assert level_labels(SIX, "group").tolist() == ["1111", "1111", "1121", "3111", "3111", "4231"]


def test_heads_learn_each_level_and_give_each_candidate_its_class_probability(tmp_path) -> None:
    x, column = clustered()
    heads = fit_level_heads(x, column, SIX)
    priors = heads.log_priors(x)
    assert priors.shape == (len(x), len(LEVELS), len(SIX))
    for level_at, level in enumerate(LEVELS):
        labels = level_labels(SIX, level)
        truth = labels[column.numpy()]
        assert np.mean(labels[priors[:, level_at].argmax(axis=1)] == truth) > 0.95
        first = {c: i for i, c in reversed(list(enumerate(labels)))}  # a column per class
        mass = np.exp(priors[:, level_at, sorted(first.values())]).sum(axis=1)
        assert np.allclose(mass, 1.0)
        same = labels[:, None] == labels[None, :]  # candidates of one class: one probability
        assert np.allclose(priors[:, level_at][:, np.flatnonzero(same[0])].std(axis=1), 0.0)
    again = fit_level_heads(x, column, SIX)
    assert all(torch.equal(heads.weights[k], again.weights[k]) for k in LEVELS)  # deterministic
    save_level_heads(tmp_path, heads)
    loaded = load_level_heads(tmp_path)
    assert np.array_equal(loaded.log_priors(x), priors)
    assert load_level_heads(tmp_path / "nowhere") is None


def test_the_cache_spares_a_second_fit_and_refits_for_other_vectors(tmp_path, monkeypatch) -> None:
    from naics_ml.inference import level_heads

    x, column = clustered()
    cache = tmp_path / "level_heads.pt"
    first = fit_level_heads(x, column, SIX, cache=cache)
    fits = []
    monkeypatch.setattr(
        level_heads, "_fit_head", lambda *a: fits.append(a) or first.weights["group"]
    )
    cached = fit_level_heads(x, column, SIX, cache=cache)
    assert fits == [] and all(torch.equal(first.weights[k], cached.weights[k]) for k in LEVELS)
    other, _ = clustered(seed=1)
    fit_level_heads(other, column, SIX, cache=cache)
    assert len(fits) == len(LEVELS)


def parts_with_levels(probs: np.ndarray, sector_prior: np.ndarray) -> ScoreParts:
    """Parts whose code softmax is ``probs`` and whose sector head says ``sector_prior``."""
    n, m = probs.shape
    levels = np.zeros((n, len(LEVELS), m))
    levels[:, 0] = np.log(sector_prior)
    return ScoreParts(distance=np.zeros((n, m)), code=probs, levels=levels)


def test_level_weights_reweight_the_ranking_and_keep_a_distribution() -> None:
    probs = np.array([[0.5, 0.4, 0.1]])
    sector_prior = np.array([[0.1, 0.9, 0.9]])  # columns 1 and 2 are the sector the head reads
    parts = parts_with_levels(probs, sector_prior)
    flat = parts.mix(MemoryConfig(weight=0, lexical_weight=0, base_weight=0))
    assert np.array_equal(flat, probs)
    decoded = parts.mix(MemoryConfig(weight=0, lexical_weight=0, base_weight=0, sector_weight=1))
    expected = probs * sector_prior / (probs * sector_prior).sum()
    assert np.allclose(decoded, expected) and decoded.argmax() == 1
    with pytest.raises(ValueError, match="sector_weight"):
        MemoryConfig(sector_weight=-1)


def test_tuning_chooses_level_weights_on_validation_only_when_they_help() -> None:
    candidates = ["111110", "311111", "311119"]
    probs = np.array([[0.5, 0.45, 0.05], [0.1, 0.2, 0.7]])
    truth = {"val": [["311111"], ["311119"]]}
    helps = parts_with_levels(probs, np.array([[0.1, 0.9, 0.9], [0.1, 0.9, 0.9]]))
    tuned = tune_blend({"val": helps}, truth, candidates)
    assert tuned.score == 1.0 and tuned.config.sector_weight > 0
    misleads = parts_with_levels(probs, np.array([[0.9, 0.1, 0.1], [0.9, 0.1, 0.1]]))
    tuned = tune_blend({"val": misleads}, truth, candidates)
    assert tuned.score == 0.5 and tuned.config.level_weights == (0.0, 0.0, 0.0)
