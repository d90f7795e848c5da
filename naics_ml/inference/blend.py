"""The blend ``predict`` ranks by: the score parts of a batch of texts, and the one function
that mixes them under a ``MemoryConfig`` (the weights chosen on validation data).

    p = (1 - w_lex) * [(1 - w') * p_code + w' * p_points] + w_lex * p_lexical,  w' = w / (1 - w_lex)
    p = (1 - w_base) * p + w_base * p_base
    p ∝ p * P_sector^a * P_subsector^s * P_group^g   (hierarchical decoding; 0 = flat)

Rows that share no word with any remembered entry keep the code and point parts, renormalised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from naics_ml.inference.entry_memory import MemoryConfig

__all__ = ["ScoreParts", "blend_probabilities", "mix_probabilities"]


@dataclass(frozen=True)
class ScoreParts:
    """The blend's distributions over six-digit codes for n texts, each (n, m); None = off.

    ``distance``: Lorentz distance to each code; ``code``: the query softmax over codes;
    ``points``/``lexical``: the entry memory as points / as words (``matched``: the text shares
    a word with some entry); ``base``: the frozen base model's vote; ``base_query``: the texts'
    own unit vectors under the frozen base model (n, H), reused by the exclusion warnings.
    """

    distance: np.ndarray
    code: np.ndarray
    points: np.ndarray | None = None
    lexical: np.ndarray | None = None
    matched: np.ndarray | None = None
    base: np.ndarray | None = None
    base_query: np.ndarray | None = None
    levels: np.ndarray | None = None  # (n, levels, m) log priors of the level heads
    entry_distance: np.ndarray | None = None  # (n, entries), kept only when asked (predict)

    @staticmethod
    def concatenate(batches: Sequence[ScoreParts]) -> ScoreParts:
        fields = {}
        names = ("distance", "code", "points", "lexical", "matched", "base", "base_query")
        for name in (*names, "levels", "entry_distance"):
            values = [getattr(b, name) for b in batches]
            fields[name] = None if values[0] is None else np.concatenate(values)
        return ScoreParts(**fields)

    def mix(self, config: MemoryConfig) -> np.ndarray:
        """The probabilities ``predict`` ranks by, under ``config``'s weights."""

        def part(values: np.ndarray | None, weight: float) -> torch.Tensor | None:
            return None if values is None or weight <= 0 else torch.from_numpy(values)

        lexical = part(self.lexical, config.lexical_weight)
        probs = mix_probabilities(
            torch.from_numpy(self.code),
            part(self.points, config.weight),
            lexical,
            None if lexical is None else torch.from_numpy(self.matched),
            config,
        )
        base = part(self.base, config.base_weight)
        if base is not None:
            probs = (1.0 - config.base_weight) * probs + config.base_weight * base
        probs = probs.numpy()
        exponents = np.asarray(config.level_weights)
        if self.levels is None or not exponents.any():
            return probs
        log = np.log(np.maximum(probs, 1e-300)) + np.einsum("nlm,l->nm", self.levels, exponents)
        log -= log.max(axis=1, keepdims=True)
        mixed = np.exp(log)
        return mixed / mixed.sum(axis=1, keepdims=True)


def blend_probabilities(code_probs: Tensor, memory_probs: Tensor, weight: float) -> Tensor:
    """``(1 - weight) * code_probs + weight * memory_probs`` (both rows sum to 1)."""
    return (1.0 - weight) * code_probs + weight * memory_probs


def mix_probabilities(
    code_probs: Tensor,
    memory_probs: Tensor | None,
    lexical_probs: Tensor | None,
    matched: Tensor | None,
    config: MemoryConfig,
) -> Tensor:
    """The three-way blend of the module doc; ``None`` parts are off. Rows where ``matched``
    is False (no word shared with any entry) keep the code and point parts, renormalised."""
    lexical_share = config.lexical_weight if lexical_probs is not None else 0.0
    dense = code_probs
    if memory_probs is not None:
        dense = blend_probabilities(
            code_probs,
            memory_probs,
            config.weight / (1.0 - lexical_share) if lexical_share < 1 else 0.0,
        )
    if lexical_probs is None:
        return dense
    if matched is None or matched.shape != (len(code_probs),):
        raise ValueError("lexical probabilities need a (rows,) matched mask")
    mixed = blend_probabilities(dense, lexical_probs, lexical_share)
    return torch.where(matched[:, None], mixed, dense)
