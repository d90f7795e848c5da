"""Checks of a trained stage, from the metrics its own run computed: (passed, details)."""

from __future__ import annotations

import numpy as np

from naics_ml.data.invariants import Result

__all__ = ["check_beats_baselines", "check_expert_balance"]


def check_expert_balance(utilization: dict[str, float], min_share: float = 0.05) -> Result:
    """Every fusion expert takes at least ``min_share`` of the routed slots (uniform top-2 of
    four is 0.25 each; the predecessor's collapsed experts were at 0.006-0.015)."""
    shares = {name: round(float(v), 4) for name, v in sorted(utilization.items())}
    if not shares:
        return False, {"error": "no expert utilization was logged"}
    starved = {name: v for name, v in shares.items() if v < min_share}
    return not starved, {"utilization": shares, "min_share": min_share, "starved": starved}


def check_beats_baselines(metrics: dict[str, float], names: tuple[str, ...]) -> Result:
    """The model scores above both baselines (zero-shot base model, TF-IDF) on each metric."""
    table, behind = {}, []
    for name in names:
        row = {
            "model": metrics.get(name),
            "zero_shot": metrics.get(f"baseline_zero_shot_{name}"),
            "tfidf": metrics.get(f"baseline_tfidf_{name}"),
        }
        table[name] = {k: None if v is None else round(float(v), 4) for k, v in row.items()}
        values = list(row.values())
        if any(v is None or not np.isfinite(v) for v in values) or values[0] <= max(values[1:]):
            behind.append(name)
    return not behind, {"metrics": table, "not_ahead": behind}
