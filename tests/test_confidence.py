"""Calibration, the hierarchical fallback, exclusion warnings and the selective-accuracy table,
on hand-made inputs whose answers are known."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from naics_ml.evaluation.confidence import _selective_accuracy, truth_columns
from naics_ml.inference.calibration import (
    Calibration,
    calibrate,
    expected_calibration_error,
    fit_temperature,
    load_calibration,
    save_calibration,
)
from naics_ml.inference.evidence import ExclusionIndex, nearest_rows
from naics_ml.inference.fallback import HierarchyIndex, ancestor, is_ancestor_or_self


def test_ece_of_known_bins():
    # bin 0.9: accuracy 0.5 -> |0.5 - 0.9| * 2/4; bin 0.1: accuracy 0 -> |0 - 0.1| * 2/4
    ece = expected_calibration_error(np.array([0.9, 0.9, 0.1, 0.1]), np.array([1, 0, 0, 0]))
    assert ece == pytest.approx(0.25)
    assert expected_calibration_error(np.array([0.75] * 4), np.array([1, 1, 1, 0])) == 0.0


def test_temperature_scaling_recovers_an_overconfident_model():
    """Labels drawn from softmax(z / 2) scored by softmax(z): the fitted T is close to 2, the
    ranking is unchanged and the calibration error falls."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 3.0, size=(4000, 12))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    true_probs = calibrate(probs, 2.0)
    truth = np.array([rng.choice(12, p=p) for p in true_probs])
    fitted = fit_temperature(probs, truth)
    assert fitted.temperature == pytest.approx(2.0, rel=0.1)
    assert fitted.validation_nll < fitted.validation_nll_raw
    calibrated = calibrate(probs, fitted.temperature)
    assert (calibrated.argmax(1) == probs.argmax(1)).all()
    correct = probs.argmax(1) == truth
    raw = expected_calibration_error(probs.max(1), correct)
    assert expected_calibration_error(calibrated.max(1), correct) < raw / 3
    # rows whose true code is not a candidate are ignored, not counted as misses
    assert fit_temperature(probs[:5], np.full(5, -1)) == Calibration()


def test_calibration_round_trip(tmp_path):
    assert load_calibration(tmp_path) is None
    saved = Calibration(1.7, 0.55, validation_nll_raw=0.9, validation_nll=0.8, validation_rows=100)
    save_calibration(tmp_path, saved)
    assert load_calibration(tmp_path / "checkpoint.pt") == saved


SIX = ["238210", "238220", "238290", "311111", "321113", "541511"]


def test_fallback_takes_the_deepest_confident_level():
    index = HierarchyIndex.build(SIX)
    probs = np.array(
        [
            [0.30, 0.30, 0.10, 0.0, 0.0, 0.30],  # 2382 holds 0.7
            [0.80, 0.10, 0.05, 0.0, 0.0, 0.05],  # confident six digits
            [0.05, 0.05, 0.0, 0.45, 0.40, 0.05],  # 31-33: 311 + 321 share only the sector
            [0.20, 0.10, 0.10, 0.20, 0.20, 0.20],  # nothing reaches 0.5... but sector 23 = 0.4
        ]
    )
    fb = index.fallback(probs, 0.5)
    assert fb.codes == ["2382", "238210", "31", None]
    assert fb.depth.tolist() == [4, 6, 2, 0]
    np.testing.assert_allclose(fb.mass[:3], [0.7, 0.8, 0.85])
    assert index.fallback(probs, 0.9).codes == [None, "2382", None, None]  # 0.8 + 0.1 + 0.05
    with pytest.raises(ValueError, match="min_confidence"):
        index.fallback(probs, 0.0)


def test_ancestors_merge_range_sectors():
    assert ancestor("321113", 2) == "31" and ancestor("321113", 3) == "321"
    assert is_ancestor_or_self("31", "321113") and is_ancestor_or_self("321113", "321113")
    assert not is_ancestor_or_self("3211", "321213") and not is_ancestor_or_self("32", "321113")


def _words(texts: list[str]) -> np.ndarray:
    """Unit bag-of-words vectors over a small fixed vocabulary (a real, simple encoder)."""
    vocab = ["duct", "cleaning", "septic", "tanks", "installing", "heating", "repair"]
    rows = np.array([[t.lower().count(w) for w in vocab] for t in texts], dtype=float)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms == 0, 1.0, norms)


def test_exclusion_warnings_name_the_line_and_offer_its_code():
    codes = pl.DataFrame(
        {
            "code": ["238220", "561790", "238910"],
            "title": ["Plumbing and HVAC", "Other Services to Buildings", "Site Preparation"],
            "excluded": [
                "Establishments primarily engaged in--\n"
                "Duct cleaning--are classified in Industry 561790, Other Services to Buildings;\n"
                "Installing septic tanks--are classified in Industry 238910, Site Preparation.",
                None,
                None,
            ],
        }
    )
    calls: list[list[str]] = []

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        return _words(texts)

    index = ExclusionIndex(codes, encode)
    assert [a for _, a, _ in index.lines("238220")] == ["Duct cleaning", "Installing septic tanks"]
    text = _words(["we do duct cleaning"])[0]
    (warning,) = index.warnings("238220", text, threshold=0.6)
    assert warning.alternative_code == "561790" and "Duct cleaning" in warning.exclusion
    assert warning.alternative_title == "Other Services to Buildings"
    assert index.warnings("238220", _words(["heating repair"])[0], threshold=0.6) == []
    assert index.warnings("561790", text, threshold=0.0) == []  # no exclusions at all
    assert index.alternatives(["238220", "238220"], _words(["duct", "septic tanks"]), 0.6) == [
        {"561790"},
        {"238910"},
    ]
    assert len(calls) == 1  # the activities are encoded once per code
    # saved vectors (what a stage's points.pt holds) spare every encoding
    vectors = index.vectors()
    assert vectors.shape == (2, 7) and len(calls) == 1  # 238220's were already encoded
    reloaded = ExclusionIndex(codes, encode, vectors)
    assert reloaded.warnings("238220", text, threshold=0.6) == [warning]
    assert len(calls) == 1


def test_nearest_rows_and_truth_columns():
    distance = np.array([0.5, 0.1, 0.9, 0.2, 0.3])
    assert nearest_rows(distance, np.array([0, 2, 3, 4]), 3).tolist() == [3, 4, 0]
    assert nearest_rows(distance, np.array([], dtype=int), 3).tolist() == []
    assert truth_columns(np.array(SIX), ["541511", "999999"]).tolist() == [5, -1]


def test_selective_accuracy_abstains_on_the_least_confident():
    confidence = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    correct = np.array([1, 1, 1, 1, 0, 1, 0, 0, 0, 0], dtype=bool)
    table = dict((c, (t, a)) for c, t, a in _selective_accuracy(confidence, correct))
    assert table[1.0] == (0.05, 0.5)
    assert table[0.4] == (0.6, 1.0)
    assert table[0.5] == (0.5, 0.8)
