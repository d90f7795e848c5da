"""A broader code when unsure: the deepest level whose summed probability is high enough.

A vague text ("we install heating and cooling systems") spreads its probability over sibling
six-digit codes. Summing each six-digit code's probability into its ancestors (5, 4, 3 digits and
the sector) gives a distribution per level; the answer is the deepest code whose mass reaches
``min_confidence``: "2382 Building Equipment Contractors" rather than a wrong six-digit guess.
When not even a sector reaches it, there is no fallback (``None``, depth 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from naics_ml.data.codes import sector_of

__all__ = ["LEVELS", "Fallback", "HierarchyIndex", "ancestor", "is_ancestor_or_self"]

LEVELS = (6, 5, 4, 3, 2)


def ancestor(code: str, level: int) -> str:
    """The code's ancestor at ``level`` digits (2 = its sector, with 31-33 as 31, ...)."""
    return sector_of(code) if level == 2 else code[:level]


def is_ancestor_or_self(candidate: str, code: str) -> bool:
    """Whether ``candidate`` is ``code`` or one of its ancestors."""
    return len(candidate) <= len(code) and ancestor(code, len(candidate)) == candidate


@dataclass(frozen=True)
class Fallback:
    """Per text: the fallback code (None when no level is confident enough), its depth in
    digits (0 without one) and its summed probability."""

    codes: list[str | None]
    depth: np.ndarray
    mass: np.ndarray


@dataclass(frozen=True)
class HierarchyIndex:
    """For every level, the distinct ancestors of the six-digit candidates and, per candidate,
    the column of its ancestor: summing probabilities into a level is one ``np.add.at``."""

    codes: dict[int, np.ndarray]
    column: dict[int, np.ndarray]

    @classmethod
    def build(cls, six_digit_codes: Sequence[str]) -> HierarchyIndex:
        codes, column = {}, {}
        for level in LEVELS:
            names = [ancestor(str(c), level) for c in six_digit_codes]
            codes[level], column[level] = np.unique(np.asarray(names), return_inverse=True)
        return cls(codes, column)

    def level_mass(self, probs: np.ndarray, level: int) -> np.ndarray:
        """(n, codes at ``level``): each ancestor's summed probability."""
        out = np.zeros((probs.shape[0], len(self.codes[level])))
        np.add.at(out.T, self.column[level], np.asarray(probs).T)
        return out

    def fallback(self, probs: np.ndarray, min_confidence: float) -> Fallback:
        """The deepest code per row whose summed probability reaches ``min_confidence``."""
        if not 0.0 < min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in (0, 1], got {min_confidence}")
        n = probs.shape[0]
        chosen: list[str | None] = [None] * n
        depth, mass = np.zeros(n, dtype=np.int64), np.zeros(n)
        for level in LEVELS:
            level_mass = self.level_mass(probs, level)
            best = level_mass.argmax(axis=1)
            value = level_mass[np.arange(n), best]
            for row in np.flatnonzero((depth == 0) & (value >= min_confidence)):
                chosen[row] = str(self.codes[level][best[row]])
                depth[row], mass[row] = level, value[row]
        return Fallback(chosen, depth, mass)
