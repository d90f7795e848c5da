"""Confidence you can act on: temperature scaling of ``predict``'s probabilities.

The blended probability ``Classifier.predict`` ranks by is a mixture of softmaxes with
temperatures chosen for ranking, not for calibration. Temperature scaling (Guo et al., 2017)
rescales its log-probabilities, ``p_T ∝ p^(1/T)``, with the one ``T`` that minimises the negative
log-likelihood of the true codes on the index ``validation`` split; the ranking is unchanged.
The stage keeps ``T`` in ``calibration.json``; the Classifier reports ``p_T`` as ``confidence``.
Expected calibration error (15 equal-width bins of the top-1 confidence) says how far
confidence is from accuracy.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from naics_ml.io import atomic_write_text
from naics_ml.stage_folder import StageFolder

__all__ = [
    "Calibration",
    "calibrate",
    "expected_calibration_error",
    "fit_temperature",
    "load_calibration",
    "reliability_bins",
    "save_calibration",
]

_FLOOR = 1e-12  # probabilities below this count as this, so log p stays finite


@dataclass(frozen=True)
class Calibration:
    """The fitted temperature and what it did on the data that chose it, and the similarity
    from which an exclusion warning is raised (:mod:`naics_ml.inference.evidence`), chosen on
    the same split."""

    temperature: float = 1.0
    exclusion_threshold: float = 0.6
    validation_nll_raw: float = float("nan")
    validation_nll: float = float("nan")
    validation_rows: int = 0


def calibrate(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``p^(1/T)`` renormalised per row (rows are distributions over the candidates)."""
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), _FLOOR, None)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=1, keepdims=True)


def _nll(probs: np.ndarray, truth: np.ndarray, temperature: float) -> float:
    calibrated = calibrate(probs, temperature)
    return float(-np.mean(np.log(np.clip(calibrated[np.arange(len(truth)), truth], _FLOOR, 1))))


def fit_temperature(probs: np.ndarray, truth: np.ndarray) -> Calibration:
    """The ``T`` in [0.05, 20] minimising the NLL of column ``truth[i]`` in row ``i``: a log-spaced
    grid, then golden-section search around its best point. Rows with ``truth < 0`` (a code
    outside the candidates) are ignored."""
    probs, truth = np.asarray(probs), np.asarray(truth)
    keep = truth >= 0
    probs, truth = probs[keep], truth[keep]
    if not len(truth):
        return Calibration()
    grid = np.geomspace(0.05, 20.0, 41)
    losses = [_nll(probs, truth, t) for t in grid]
    best = int(np.argmin(losses))
    lo, hi = np.log(grid[max(best - 1, 0)]), np.log(grid[min(best + 1, len(grid) - 1)])
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    for _ in range(40):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if _nll(probs, truth, np.exp(a)) <= _nll(probs, truth, np.exp(b)):
            hi = b
        else:
            lo = a
    temperature = float(np.exp((lo + hi) / 2.0))
    return Calibration(
        temperature=temperature,
        validation_nll_raw=_nll(probs, truth, 1.0),
        validation_nll=_nll(probs, truth, temperature),
        validation_rows=len(truth),
    )


def reliability_bins(
    confidence: np.ndarray, correct: np.ndarray, bins: int = 15
) -> list[tuple[float, float, float, int]]:
    """Per equal-width bin of confidence: (lower edge, mean confidence, accuracy, rows)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        rows = which == b
        n = int(rows.sum())
        mean_conf = float(confidence[rows].mean()) if n else float("nan")
        accuracy = float(correct[rows].mean()) if n else float("nan")
        out.append((float(edges[b]), mean_conf, accuracy, n))
    return out


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = 15
) -> float:
    """Σ_b (n_b / n) |accuracy_b - mean confidence_b| over equal-width bins."""
    total = len(np.asarray(confidence))
    if not total:
        return float("nan")
    table = reliability_bins(confidence, correct, bins)
    return float(sum(n / total * abs(acc - conf) for _, conf, acc, n in table if n))


def save_calibration(path: Path | str, calibration: Calibration) -> Path:
    target = StageFolder.of(path).calibration
    atomic_write_text(target, json.dumps(asdict(calibration), indent=1))
    return target


def load_calibration(path: Path | str) -> Calibration | None:
    """The stage's calibration, or None when it has none (confidence = the raw probability)."""
    file = StageFolder.of(path).calibration
    return Calibration(**json.loads(file.read_text())) if file.is_file() else None
