"""What ``Classifier.predict`` returns for one text: its ranked codes, each a
:class:`Prediction` with its calibrated confidence, the text's broader fallback code, the
index entries behind the code and the exclusions the text may fall under."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from naics_ml.inference.evidence import Evidence, ExclusionWarning

__all__ = ["Prediction", "ranked_predictions"]


@dataclass(frozen=True)
class Prediction:
    """One ranked code for a text. ``score`` is the blended probability ``predict`` ranks by;
    ``confidence`` the same calibrated on validation data (a 0.7 is right about 70 % of the
    time); the fallback is the deepest code (6 to 2 digits) whose summed confidence reaches
    ``min_confidence`` (the same for every rank of a text; None when no level does)."""

    code: str
    title: str
    score: float  # probability of the code over all six-digit codes (see the module doc)
    distance: float  # Lorentz geodesic distance between the text and the code
    confidence: float = float("nan")
    fallback_code: str | None = None
    fallback_title: str | None = None
    fallback_confidence: float = float("nan")
    evidence: tuple[Evidence, ...] = ()  # the code's nearest labelled index entries
    warnings: tuple[ExclusionWarning, ...] = ()  # exclusions of the code the text resembles


def ranked_predictions(
    classifier: Any, texts: list[str], top_k: int, min_confidence: float
) -> list[list[Prediction]]:
    """``Classifier.predict`` for one chunk of texts (``classifier``: that Classifier)."""
    queries, frozen = classifier.model.encode_texts_and_frozen(texts)
    parts = classifier.score_parts(queries, texts, keep_entry_distance=True, base_query=frozen)
    distance, probs = parts.distance, parts.mix(classifier.memory_config)
    confidence = classifier.confidence(probs)
    fallback = classifier.fallback(confidence, min_confidence)
    k = min(top_k, distance.shape[1])
    # stable sort on (-probability, distance): ties in probability go to the nearer code
    order = np.lexsort((distance, -probs), axis=1)[:, :k]
    warnings = classifier.exclusion_warnings(order[:, 0], texts, frozen.cpu().double().numpy())
    out = []
    for row in range(len(order)):
        fb = fallback.codes[row]
        shared = {
            "fallback_code": fb,
            "fallback_title": None if fb is None else classifier.titles[fb],
            "fallback_confidence": float(fallback.mass[row]) if fb else float("nan"),
        }
        entry_distance = None if parts.entry_distance is None else parts.entry_distance[row]
        out.append(
            [
                Prediction(
                    code=(code := str(classifier.six_digit_codes[i])),
                    title=str(classifier.titles[code]),
                    score=float(probs[row, i]),
                    distance=float(distance[row, i]),
                    confidence=float(confidence[row, i]),
                    evidence=classifier.evidence(int(i), entry_distance),
                    warnings=tuple(warnings[row]) if rank == 0 else (),
                    **shared,
                )
                for rank, i in enumerate(order[row])
            ]
        )
    return out
