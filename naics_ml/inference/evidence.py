"""The evidence behind an answer: the labelled entries that support it, and the Census
exclusions it may fall under.

* **Supporting entries.** The predicted code's labelled index entries (training splits only,
  never validation or test) nearest to the text: what the answer rests on.
* **Exclusion warnings.** A code's ``excluded`` lines name activities the Census classifies
  elsewhere ("Duct cleaning--are classified in Industry 561790, ..."). When the text is close
  to one of the predicted code's excluded activities (cosine of the frozen base model's vectors
  at least a threshold chosen on the validation split), the result names that line and offers
  the code it sends the activity to as an alternative.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from naics_ml.data.codes import referenced_codes

__all__ = ["EVIDENCE_KINDS", "Evidence", "ExclusionIndex", "ExclusionWarning", "nearest_rows"]

EVIDENCE_KINDS = ("train", "examples")  # index-entry kinds of the training splits
_CLASSIFIED = re.compile(r"\s*-{1,2}\s*(are|is) classified\b.*$", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Evidence:
    """A labelled entry supporting a prediction; ``distance``: Lorentz distance to the text."""

    text: str
    code: str
    distance: float


@dataclass(frozen=True)
class ExclusionWarning:
    """The text resembles an activity the predicted code excludes; the Census puts it in
    ``alternative_code``. ``similarity``: cosine between the text and the excluded activity."""

    exclusion: str
    alternative_code: str
    alternative_title: str
    similarity: float


def nearest_rows(distance: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` of ``rows`` with the smallest ``distance`` (one text against all entries)."""
    if not len(rows):
        return rows
    order = np.argsort(distance[rows], kind="stable")[:k]
    return rows[order]


class ExclusionIndex:
    """Every code's exclusion lines with the codes they send activities to, and the activities'
    unit vectors (``encode``: texts -> (n, H) unit vectors).

    ``vectors`` (all activities, :meth:`activities` order, as a stage's ``points.pt`` saves
    them) spares encoding them; without it each code's activities are encoded on first use.
    """

    def __init__(
        self,
        codes: pl.DataFrame,
        encode: Callable[[list[str]], np.ndarray],
        vectors: np.ndarray | None = None,
    ) -> None:
        self._encode = encode
        self._title = dict(zip(codes["code"].to_list(), codes["title"].to_list(), strict=True))
        self._lines: dict[str, list[tuple[str, str, list[str]]]] = {}
        for code, text in codes.select("code", "excluded").iter_rows():
            items = []
            for line in (text or "").split("\n"):
                targets = [t for t in referenced_codes(line) if t in self._title and t != code]
                if targets:
                    activity = _CLASSIFIED.sub("", line).strip(" ;,.")
                    items.append((line.strip(), activity or line, targets))
            if items:
                self._lines[code] = items
        self._vectors: dict[str, np.ndarray] = {}
        if vectors is not None and len(vectors) == len(self.activities()):
            start = 0
            for code, items in self._lines.items():
                self._vectors[code] = np.asarray(vectors[start : start + len(items)], np.float64)
                start += len(items)

    def lines(self, code: str) -> list[tuple[str, str, list[str]]]:
        """(line, excluded activity, target codes) of ``code``'s exclusions."""
        return self._lines.get(code, [])

    def activities(self) -> list[str]:
        """Every excluded activity, code by code (code table order), line by line."""
        return [activity for items in self._lines.values() for _, activity, _ in items]

    def vectors(self) -> np.ndarray:
        """(activities, H) unit vectors of :meth:`activities`, encoding the missing ones in
        one batch (what a stage saves so that its Classifier never encodes them)."""
        missing = [code for code in self._lines if code not in self._vectors]
        texts = [activity for code in missing for _, activity, _ in self._lines[code]]
        if texts:
            encoded = np.asarray(self._encode(texts), dtype=np.float64)
            start = 0
            for code in missing:
                n = len(self._lines[code])
                self._vectors[code] = encoded[start : start + n]
                start += n
        if not self._lines:
            return np.zeros((0, 0))
        return np.concatenate([self._vectors[code] for code in self._lines])

    def _activity_vectors(self, code: str) -> np.ndarray:
        if code not in self._vectors:
            self._vectors[code] = self._encode([a for _, a, _ in self._lines[code]])
        return self._vectors[code]

    def similarities(self, code: str, text_vector: np.ndarray) -> np.ndarray:
        """Cosine of the text (a unit vector) with each of ``code``'s excluded activities."""
        if code not in self._lines:
            return np.zeros(0)
        return self._activity_vectors(code) @ np.asarray(text_vector, dtype=np.float64)

    def warnings(
        self, code: str, text_vector: np.ndarray, threshold: float
    ) -> list[ExclusionWarning]:
        """The exclusions of ``code`` the text is at least ``threshold`` close to, closest
        first, one warning per alternative code."""
        similarity = self.similarities(code, text_vector)
        out: list[ExclusionWarning] = []
        seen: set[str] = set()
        for i in np.argsort(-similarity, kind="stable"):
            if similarity[i] < threshold:
                break
            line, _, targets = self._lines[code][i]
            for target in targets:
                if target not in seen:
                    seen.add(target)
                    title = self._title[target]
                    out.append(ExclusionWarning(line, target, title, float(similarity[i])))
        return out

    def alternatives(
        self, codes: Sequence[str], text_vectors: np.ndarray, threshold: float
    ) -> list[set[str]]:
        """Per text, the alternative codes its warnings would offer for its code."""
        return [
            {w.alternative_code for w in self.warnings(c, v, threshold)}
            for c, v in zip(codes, text_vectors, strict=True)
        ]
