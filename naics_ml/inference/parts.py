"""The score parts a Classifier blends besides the embedding, one small object each, holding
its own settings: the remembered entries as points (:class:`EntryPoints`) and as words
(:class:`EntryWords`), and the frozen base model's vote (:class:`BaseVote`). Each turns one
batch of texts into a distribution over the six-digit codes (``naics_ml.inference.blend``
mixes them); the level heads of the hierarchical decoding are the fourth
(``naics_ml.inference.level_heads``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
from torch import Tensor

from naics_ml.data.codes import six_digit_mask
from naics_ml.inference.entry_memory import candidate_positions, memory_probabilities
from naics_ml.inference.lexical_memory import LexicalIndex
from naics_ml.model.lorentz import LiftedPoints, Lorentz

__all__ = ["BaseVote", "EntryPoints", "EntryWords"]


@dataclass(frozen=True)
class EntryPoints:
    """The remembered entries as points: a softmax over entries of ``-distance / temperature``,
    summed per code. ``column[e]`` is entry e's candidate column."""

    points: Tensor
    lifted: LiftedPoints
    column: Tensor
    temperature: float

    @classmethod
    def build(
        cls, points: Tensor, column: Tensor, manifold: Lorentz, temperature: float
    ) -> EntryPoints:
        manifold.check(points)
        return cls(points, manifold.lifted(points), column, temperature)

    def scores(self, rows: Tensor, num_codes: int) -> tuple[np.ndarray, Tensor]:
        """Probabilities (n, m) for query points ``rows``, and their distances to the entries."""
        entry_distance = self.lifted.distance_from(rows).to(rows.dtype)
        probs = memory_probabilities(
            entry_distance.double(), self.column, num_codes, self.temperature
        )
        return probs.cpu().numpy(), entry_distance


@dataclass(frozen=True)
class EntryWords:
    """The remembered entries as words: the same softmax over TF-IDF cosine distances; a text
    that shares no word with any entry is marked unmatched (the blend then drops this part)."""

    index: LexicalIndex
    column: Tensor
    temperature: float

    def scores(self, texts: list[str], num_codes: int) -> tuple[np.ndarray, np.ndarray]:
        cosine, hit = self.index.similarity(texts)
        probs = memory_probabilities(  # cosine distance 1 - cos: same softmax
            torch.as_tensor(1.0 - cosine, device=self.column.device),
            self.column,
            num_codes,
            self.temperature,
        )
        return probs.cpu().numpy(), np.asarray(hit, dtype=bool)


@dataclass(frozen=True)
class BaseVote:
    """The frozen base model's vote: its cosine softmax over each six-digit code's title and
    description and every remembered entry (unit vectors, stored (H, texts): one text against
    the 21k vectors then takes half the time of a product with the transposed view)."""

    vectors_t: Tensor
    column: Tensor
    temperature: float

    @classmethod
    def build(
        cls,
        codes: pl.DataFrame,
        memory: pl.DataFrame | None,
        candidates: np.ndarray,
        encode: Callable[[Sequence[str]], Tensor],
        saved: Tensor | None,
        temperature: float,
    ) -> BaseVote:
        """The base texts of ``codes`` (and ``memory``), encoded by ``encode`` unless ``saved``
        holds their vectors."""
        from naics_ml.model.channels import code_texts

        six = six_digit_mask(codes)
        texts = [t for t, keep in zip(code_texts(codes), six, strict=True) if keep]
        column = list(range(len(texts)))
        if memory is not None and memory.height:
            texts += memory["text"].to_list()
            column += candidate_positions(memory["code"].to_numpy(), candidates).tolist()
        vectors = saved if saved is not None and len(saved) == len(texts) else encode(texts)
        device = vectors.device
        column_t = torch.as_tensor(column, dtype=torch.long, device=device)
        return cls(vectors.T.contiguous(), column_t, temperature)

    def scores(self, query: Tensor, num_codes: int) -> np.ndarray:
        """Probabilities (n, m) for the texts' frozen unit vectors ``query`` (n, H)."""
        distance = (1.0 - query @ self.vectors_t).double()
        return (
            memory_probabilities(distance, self.column, num_codes, self.temperature).cpu().numpy()
        )
