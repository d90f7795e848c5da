"""How far ``predict``'s confidence, fallback and exclusion warnings can be trusted.

:func:`fit_serving_calibration` chooses, on the index ``validation`` split, the temperature
that calibrates the confidence and the similarity from which an exclusion warning is raised.
:func:`confidence_report` measures on the ``test`` split: expected calibration error before and
after (15 bins), the fallback's accuracy (an ancestor of, or equal to, the true code) and mean
depth, the selective-accuracy curve (top-1 accuracy on the most confident share of the texts)
and how often a wrong top-1's true code is among the alternatives the warnings offer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from naics_ml.inference.calibration import (
    Calibration,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from naics_ml.inference.fallback import is_ancestor_or_self

__all__ = [
    "COVERAGES",
    "ConfidenceReport",
    "confidence_report",
    "fit_serving_calibration",
    "truth_columns",
]

COVERAGES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
WARNING_GRID = tuple(np.round(np.arange(0.40, 0.951, 0.05), 2))
MIN_CONFIDENCE = 0.5  # the CLI's default --min-confidence


@dataclass(frozen=True)
class ConfidenceReport:
    """Test-split figures, and the tables behind the reliability and selective plots."""

    metrics: dict[str, float]
    reliability_raw: list[tuple[float, float, float, int]]
    reliability: list[tuple[float, float, float, int]]
    selective: list[tuple[float, float, float]]  # (coverage, threshold, accuracy)


def truth_columns(six_digit_codes: np.ndarray, truth: list[str]) -> np.ndarray:
    """The candidate column of each true code (-1 when it is not a candidate)."""
    position = {str(c): i for i, c in enumerate(six_digit_codes)}
    return np.asarray([position.get(str(t), -1) for t in truth], dtype=np.int64)


def fit_serving_calibration(
    classifier: Any, probs: np.ndarray, truth: list[str], base_query: np.ndarray
) -> tuple[dict[str, float], Calibration]:
    """Fit the temperature and the warning threshold on validation rows (``probs`` as predict
    mixes them, ``base_query`` the texts' frozen base vectors): their metrics and the
    ``Calibration`` that holds them (``classifier`` is only read)."""
    columns = truth_columns(classifier.six_digit_codes, truth)
    calibration = fit_temperature(probs, columns)
    top = probs.argmax(axis=1)
    scores = {t: _warning_score(classifier, top, base_query, truth, t) for t in WARNING_GRID}
    threshold = max(WARNING_GRID, key=lambda t: (scores[t], t))
    calibration = replace(calibration, exclusion_threshold=float(threshold))
    return {
        "calibration_temperature": calibration.temperature,
        "calibration_val_nll_raw": calibration.validation_nll_raw,
        "calibration_val_nll": calibration.validation_nll,
        "exclusion_threshold": calibration.exclusion_threshold,
        "exclusion_threshold_val_score": scores[threshold],
    }, calibration


def _warning_score(
    classifier: Any, top: np.ndarray, vectors: np.ndarray, truth: list[str], threshold: float
) -> float:
    """Share of wrong top-1 rows whose true code is offered, minus the share of right ones
    that get any warning: what a threshold gains against what it costs."""
    rate, noise = _warning_rates(classifier, top, vectors, truth, threshold)
    return rate - noise


def _warning_rates(
    classifier: Any, top: np.ndarray, vectors: np.ndarray, truth: list[str], threshold: float
) -> tuple[float, float]:
    codes = [str(classifier.six_digit_codes[c]) for c in top]
    offered = classifier.exclusions.alternatives(codes, vectors, threshold)
    wrong = np.asarray([c != t for c, t in zip(codes, truth, strict=True)])
    hit = np.asarray([t in alt for t, alt in zip(truth, offered, strict=True)])
    warned = np.asarray([bool(alt) for alt in offered])
    rate = float(hit[wrong].mean()) if wrong.any() else float("nan")
    noise = float(warned[~wrong].mean()) if (~wrong).any() else 0.0
    return rate, noise


def confidence_report(
    classifier: Any, probs: np.ndarray, truth: list[str], base_query: np.ndarray
) -> ConfidenceReport:
    """The test-split figures of the module doc (``probs`` as predict mixes them)."""
    six = classifier.six_digit_codes
    top = probs.argmax(axis=1)
    correct = np.asarray([str(six[c]) == t for c, t in zip(top, truth, strict=True)])
    calibrated = classifier.confidence(probs)
    raw_conf, conf = probs.max(axis=1), calibrated.max(axis=1)
    fallback = classifier.fallback(calibrated, MIN_CONFIDENCE)
    has = np.asarray([c is not None for c in fallback.codes])
    right = [is_ancestor_or_self(c, t) for c, t in zip(fallback.codes, truth, strict=True) if c]
    metrics = {
        "test_ece_raw": expected_calibration_error(raw_conf, correct),
        "test_ece": expected_calibration_error(conf, correct),
        "test_fallback_accuracy": float(np.mean(right)) if right else float("nan"),
        "test_fallback_depth": float(fallback.depth[has].mean()) if has.any() else float("nan"),
        "test_fallback_coverage": float(has.mean()),
    }
    selective = _selective_accuracy(conf, correct)
    for coverage, threshold, accuracy in selective:
        metrics[f"test_selective_top1_cov{round(coverage * 100):03d}"] = accuracy
        metrics[f"test_selective_threshold_cov{round(coverage * 100):03d}"] = threshold
    threshold = (classifier.calibration or Calibration()).exclusion_threshold
    rate, noise = _warning_rates(classifier, top, base_query, truth, threshold)
    metrics["test_exclusion_alternative_rate"] = rate
    metrics["test_exclusion_warning_rate_when_right"] = noise
    return ConfidenceReport(
        metrics, reliability_bins(raw_conf, correct), reliability_bins(conf, correct), selective
    )


def _selective_accuracy(
    confidence: np.ndarray, correct: np.ndarray
) -> list[tuple[float, float, float]]:
    """(coverage, confidence threshold, top-1 accuracy) when abstaining on the least confident
    texts, at each of ``COVERAGES``."""
    order = np.argsort(-confidence, kind="stable")
    out = []
    for coverage in COVERAGES:
        keep = order[: max(1, round(coverage * len(order)))]
        out.append((coverage, float(confidence[keep].min()), float(correct[keep].mean())))
    return out
