"""A memory of labelled index entries that sharpens free-text classification (kNN-LM style).

A code is one point, but its index entries are many phrasings ("canola farming", "rapeseed
farming", ...): a query often lies closer to one labelled phrasing than to the code's point. The
classifier therefore keeps the entries it was trained on (the ``examples`` and ``train`` splits,
never ``validation``/``test``) and blends three distributions over six-digit codes::

    p(c | q) = (1 - w - v) * softmax_c(-d(q, code c) / T)
             + w * sum_{e of c} softmax_e(-d(q, e) / T)          (entries as points)
             + v * sum_{e of c} softmax_e(cos_tfidf(q, e) / T_v)  (entries as words)

(Khandelwal et al., 2020, kNN-LM; the last term is the lexical half of a hybrid retriever,
``naics_ml.inference.lexical_memory``). A query that shares no word with any entry drops the
last term and renormalises the other two. ``w = v = 0`` is the plain embedding. The defaults
(w = 0.25, v = 0.2, T = the training temperature, T_v = 0.05) were chosen on the validation
split with the previous defaults' ``03_hard`` checkpoint: top-1 0.687 (embedding) -> 0.718 (w =
0.35, v = 0) -> 0.738, MRR 0.782 -> 0.807 -> 0.822. The code embeddings and every hierarchy metric
are unaffected. ``MemoryConfig.base_weight`` mixes in a fourth part, the frozen base model's vote
(``naics_ml.inference.classifier``); each stage chooses all three weights on validation data
(``naics_ml.evaluation.blend_tuning``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import Tensor

from naics_ml.data.index_split import HELD_OUT_SPLITS
from naics_ml.io import write_parquet_atomic
from naics_ml.stage_folder import StageFolder

__all__ = [
    "MemoryConfig",
    "candidate_positions",
    "load_stage_memory",
    "memory_entries",
    "memory_probabilities",
    "save_stage_memory",
]


@dataclass(frozen=True)
class MemoryConfig:
    """Shares of the blend: ``weight`` for the entries as points, ``lexical_weight`` for the
    entries as words (the code embedding keeps the rest; 0 turns a part off); ``temperature``
    of the point softmax over entries (None = the stage's training temperature) and
    ``lexical_temperature`` of the TF-IDF cosine softmax. ``base_weight`` is the share of the
    frozen base model's own vote in the final mix (its cosine softmax over every code text and
    remembered entry, at ``base_temperature``): what the base model knew before training.
    ``sector_weight``, ``subsector_weight`` and ``group_weight`` are the exponents of the
    hierarchical decoding (``naics_ml.inference.level_heads``); 0 ranks the leaves flat."""

    weight: float = 0.25
    temperature: float | None = None
    lexical_weight: float = 0.2
    lexical_temperature: float = 0.05
    base_weight: float = 0.5
    base_temperature: float = 0.05
    sector_weight: float = 0.0
    subsector_weight: float = 0.0
    group_weight: float = 0.0

    def __post_init__(self) -> None:
        for name in ("weight", "lexical_weight", "base_weight"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(
                    f"MemoryConfig.{name} must be in [0, 1], got {getattr(self, name)}"
                )
        for name in ("sector_weight", "subsector_weight", "group_weight"):
            if not 0.0 <= getattr(self, name) <= 4.0:
                raise ValueError(
                    f"MemoryConfig.{name} must be in [0, 4], got {getattr(self, name)}"
                )
        if self.weight + self.lexical_weight > 1.0:
            raise ValueError(
                "MemoryConfig.weight + MemoryConfig.lexical_weight must be <= 1, got "
                f"{self.weight} + {self.lexical_weight}"
            )
        if self.temperature is not None and not self.temperature > 0:
            raise ValueError(f"MemoryConfig.temperature must be > 0, got {self.temperature}")
        if not self.base_temperature > 0:
            raise ValueError(
                f"MemoryConfig.base_temperature must be > 0, got {self.base_temperature}"
            )
        if not self.lexical_temperature > 0:
            raise ValueError(
                f"MemoryConfig.lexical_temperature must be > 0, got {self.lexical_temperature}"
            )

    @property
    def level_weights(self) -> tuple[float, float, float]:
        """The hierarchical decoding's exponents, in ``level_heads.LEVELS`` order."""
        return (self.sector_weight, self.subsector_weight, self.group_weight)

    @property
    def active(self) -> bool:
        """Whether the memory takes part in the blend at all."""
        return self.weight > 0 or self.lexical_weight > 0


def memory_entries(entries: pl.DataFrame, splits: tuple[str, ...]) -> pl.DataFrame:
    """``text``, ``code`` and ``kind`` (the split or extra query kind) of the entries of
    ``splits``; held-out splits are refused."""
    leaked = set(splits) & HELD_OUT_SPLITS
    if leaked:
        raise ValueError(f"memory splits must not include held-out splits {sorted(leaked)}")
    missing = {"text", "code", "split"} - set(entries.columns)
    if missing:
        raise ValueError(f"index entries lack columns {sorted(missing)}")
    rows = entries.filter(pl.col("split").is_in(list(splits)))
    return rows.select("text", "code", pl.col("split").alias("kind"))


def save_stage_memory(out_dir: Path | str, memory: pl.DataFrame) -> Path:
    """Write the memory table (``text``, ``code``, and ``kind`` when known) next to a stage's
    checkpoint, atomically."""
    columns = [c for c in ("text", "code", "kind") if c in memory.columns]
    return write_parquet_atomic(memory.select(columns), StageFolder(Path(out_dir)).memory)


def load_stage_memory(path: Path | str) -> pl.DataFrame | None:
    """The memory saved with a stage (folder or checkpoint file), None if it has none."""
    file = StageFolder.of(path).memory
    return pl.read_parquet(file) if file.is_file() else None


def memory_probabilities(
    entry_distance: Tensor, entry_candidate: Tensor, num_candidates: int, temperature: float
) -> Tensor:
    """(q, m) probabilities: softmax over entries of ``-distance / T``, summed per candidate.

    ``entry_distance`` is (q, n) from each query to each memory entry; ``entry_candidate`` (n,)
    the candidate column of each entry's code.
    """
    if entry_distance.shape[1] != entry_candidate.numel():
        raise ValueError("entry_distance and entry_candidate disagree on the number of entries")
    weights = torch.softmax(entry_distance / -temperature, dim=1)  # = -d / T, one pass fewer
    shape = (entry_distance.shape[0], num_candidates)
    out = torch.zeros(shape, dtype=weights.dtype, device=weights.device)
    return out.index_add_(1, entry_candidate, weights)


def candidate_positions(codes: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Column of each memory code among the candidate codes; unknown codes are an error."""
    position = {c: i for i, c in enumerate(candidates)}
    missing = sorted({c for c in codes if c not in position})
    if missing:
        raise ValueError(f"memory entries name codes that are not candidates: {missing[:10]}")
    return np.array([position[c] for c in codes], dtype=np.int64)
