"""The labelled-entry memory: split guard, the kNN distribution on hand-made distances, I/O."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

from naics_ml.inference.blend import blend_probabilities, mix_probabilities
from naics_ml.inference.entry_memory import (
    MemoryConfig,
    candidate_positions,
    load_stage_memory,
    memory_entries,
    memory_probabilities,
    save_stage_memory,
)
from naics_ml.inference.lexical_memory import LexicalIndex

ENTRIES = pl.DataFrame(
    {
        "code": ["111110", "111110", "111120", "111120", "111130"],
        "index": [5, 5, 6, 6, 7],
        "text": ["soybean farming", "soy farm", "canola farming", "rapeseed farm", "pea farm"],
        "split": ["examples", "train", "validation", "test", "train"],
    }
)


def test_memory_entries_keep_the_named_splits_and_refuse_held_out_ones():
    memory = memory_entries(ENTRIES, ("examples", "train"))
    assert memory.columns == ["text", "code", "kind"]
    assert memory["text"].to_list() == ["soybean farming", "soy farm", "pea farm"]
    assert set(memory["kind"]) <= {"examples", "train"}
    for split in ("validation", "test"):
        with pytest.raises(ValueError, match="held-out"):
            memory_entries(ENTRIES, ("train", split))
    with pytest.raises(ValueError, match="split"):
        memory_entries(ENTRIES.drop("split"), ("train",))


def test_memory_probabilities_sum_the_entry_softmax_per_code():
    # one query; entries 0 and 1 belong to candidate 0, entry 2 to candidate 2, none to 1
    distance = torch.tensor([[0.1, 0.3, 0.2]], dtype=torch.float64)
    column = torch.tensor([0, 0, 2])
    p = memory_probabilities(distance, column, 3, temperature=0.1)
    w = np.exp(-np.array([0.1, 0.3, 0.2]) / 0.1)
    w /= w.sum()
    np.testing.assert_allclose(p.numpy(), [[w[0] + w[1], 0.0, w[2]]], rtol=1e-12)
    assert math.isclose(float(p.sum()), 1.0)
    with pytest.raises(ValueError, match="number of entries"):
        memory_probabilities(distance, torch.tensor([0, 1]), 3, 0.1)


def test_blend_is_the_weighted_mixture():
    code = torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64)
    memory = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(blend_probabilities(code, memory, 0.0), code)
    torch.testing.assert_close(blend_probabilities(code, memory, 1.0), memory)
    mixed = blend_probabilities(code, memory, 0.35)
    torch.testing.assert_close(mixed, 0.65 * code + 0.35 * memory)
    assert int(mixed.argmax()) == 1  # the memory overrules a moderate embedding preference


def test_mix_renormalises_rows_without_a_lexical_match():
    code = torch.tensor([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1]], dtype=torch.float64)
    points = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    words = torch.tensor([[0.0, 0.0, 1.0], [1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64)
    matched = torch.tensor([True, False])
    config = MemoryConfig(weight=0.25, lexical_weight=0.2)
    mixed = mix_probabilities(code, points, words, matched, config)
    torch.testing.assert_close(mixed[0], 0.55 * code[0] + 0.25 * points[0] + 0.2 * words[0])
    torch.testing.assert_close(mixed[1], (0.55 * code[1] + 0.25 * points[1]) / 0.8)
    torch.testing.assert_close(mixed.sum(1), torch.ones(2, dtype=torch.float64))
    # parts that are off: points only, words only, neither
    torch.testing.assert_close(
        mix_probabilities(code, points, None, None, config), 0.75 * code + 0.25 * points
    )
    torch.testing.assert_close(
        mix_probabilities(code, None, words, matched, config)[0], 0.8 * code[0] + 0.2 * words[0]
    )
    torch.testing.assert_close(mix_probabilities(code, None, None, None, config), code)
    with pytest.raises(ValueError, match="matched"):
        mix_probabilities(code, points, words, None, config)


def test_lexical_index_scores_shared_words():
    index = LexicalIndex(["cigars merchant wholesalers", "dairy cattle farming", "cigar stores"])
    assert len(index) == 3
    cosine, matched = index.similarity(
        ["cigars merchant wholesalers", "dairy farming", "zzz qqq", "cigars"]
    )
    assert cosine.shape == (4, 3) and matched.tolist() == [True, True, False, True]
    np.testing.assert_allclose(cosine[0], [1.0, 0.0, 0.0], atol=1e-12)  # same words
    assert cosine[1, 1] > 0 and cosine[1, 0] == cosine[1, 2] == 0.0
    np.testing.assert_array_equal(cosine[2], 0.0)  # no shared word: no vote
    assert cosine[3, 0] > 0 and cosine[3, 2] == 0.0  # words, not stems: "cigar" != "cigars"
    with pytest.raises(TypeError, match="sequence"):
        index.similarity("cigars")
    for empty in ([], "cigars"):
        with pytest.raises(ValueError, match="non-empty"):
            LexicalIndex(empty)
    with pytest.raises(ValueError, match="no usable words"):
        LexicalIndex(["a", "!"])


def test_candidate_positions_and_config_validation():
    candidates = np.array(["111110", "111120", "111130"], dtype=object)
    assert candidate_positions(np.array(["111130", "111110"]), candidates).tolist() == [2, 0]
    with pytest.raises(ValueError, match="999999"):
        candidate_positions(np.array(["999999"]), candidates)
    bad_configs = (
        dict(weight=-0.1),
        dict(weight=1.5),
        dict(temperature=0.0),
        dict(lexical_weight=-0.1),
        dict(weight=0.6, lexical_weight=0.5),
        dict(lexical_temperature=0.0),
    )
    assert MemoryConfig().active and not MemoryConfig(weight=0, lexical_weight=0).active
    for bad in bad_configs:
        with pytest.raises(ValueError, match="MemoryConfig"):
            MemoryConfig(**bad)


def test_stage_memory_round_trip(tmp_path):
    assert load_stage_memory(tmp_path) is None
    memory = memory_entries(ENTRIES, ("train",))
    path = save_stage_memory(tmp_path, memory)
    assert path.name == "memory.parquet" and not list(tmp_path.glob("*.tmp*"))
    assert load_stage_memory(tmp_path).equals(memory)
    assert load_stage_memory(tmp_path / "checkpoint.pt").equals(memory)  # file path works too
