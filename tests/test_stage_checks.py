"""The invariants behind the stage assets' checks, on hand-made metrics with known answers."""

from __future__ import annotations

from naics_ml.evaluation.stage_checks import check_beats_baselines, check_expert_balance

NAMES = ("test_mrr", "recon_map")


def metrics(model: float, zero_shot: float, tfidf: float, name: str = "test_mrr") -> dict:
    return {name: model, f"baseline_zero_shot_{name}": zero_shot, f"baseline_tfidf_{name}": tfidf}


def test_beats_baselines_needs_a_strict_lead_on_every_metric():
    ahead = metrics(0.8, 0.6, 0.5) | metrics(0.9, 0.7, 0.7, "recon_map")
    passed, details = check_beats_baselines(ahead, NAMES)
    assert passed and details["not_ahead"] == []
    assert details["metrics"]["test_mrr"] == {"model": 0.8, "zero_shot": 0.6, "tfidf": 0.5}

    tied = ahead | metrics(0.7, 0.6, 0.7, "recon_map")  # a tie with TF-IDF is not a lead
    passed, details = check_beats_baselines(tied, NAMES)
    assert not passed and details["not_ahead"] == ["recon_map"]
    behind = ahead | metrics(0.5, 0.6, 0.4)
    assert check_beats_baselines(behind, NAMES)[1]["not_ahead"] == ["test_mrr"]
    missing = {k: v for k, v in ahead.items() if k != "baseline_tfidf_recon_map"}
    assert check_beats_baselines(missing, NAMES)[1]["not_ahead"] == ["recon_map"]
    nan = ahead | metrics(float("nan"), 0.6, 0.5)
    assert not check_beats_baselines(nan, NAMES)[0]


def test_expert_balance_flags_starved_experts():
    collapsed = {f"expert_utilization_{i}": v for i, v in enumerate([0.5, 0.02, 0.07, 0.41])}
    passed, details = check_expert_balance(collapsed)
    assert not passed and details["starved"] == {"expert_utilization_1": 0.02}
    balanced = {f"expert_utilization_{i}": v for i, v in enumerate([0.21, 0.27, 0.19, 0.33])}
    assert check_expert_balance(balanced) == (
        True,
        {"utilization": balanced, "min_share": 0.05, "starved": {}},
    )
    assert not check_expert_balance(balanced, min_share=0.2)[0]
    assert check_expert_balance({}) == (False, {"error": "no expert utilization was logged"})
