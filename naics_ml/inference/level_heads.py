"""Hierarchical decoding: the sector, subsector and industry group a text belongs to, read by
small heads on the frozen base model's vectors, reweight ``predict``'s six-digit scores.

Ranking 1,012 leaves flat lets a text whose words match a product land in the wrong kind of
business (a wholesaler under the manufacturing of what it sells). Each head is a multinomial
logistic regression over one level's codes (2, 3 and 4 digits; sectors merged as in
``naics_ml.data.codes.sector_of``), fitted on the frozen vectors the Classifier's
base part already holds: every six-digit code's title and description and every remembered
training text (never a validation or test entry). ``predict`` then ranks by

    p'(c) ∝ p(c) · P_sector(c)^a · P_subsector(c)^b · P_group(c)^g

with the exponents chosen on validation data beside the other blend weights
(``naics_ml.evaluation.blend_tuning``); all zero is the flat ranking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from naics_ml.io import atomic_save_torch
from naics_ml.stage_folder import StageFolder

__all__ = [
    "LEVELS",
    "LevelHeads",
    "fit_level_heads",
    "load_level_heads",
    "save_level_heads",
]

LEVELS = ("sector", "subsector", "group")  # 2, 3 and 4 digits
_DIGITS = {"sector": 2, "subsector": 3, "group": 4}


def level_labels(codes: Sequence[str] | np.ndarray, level: str) -> np.ndarray:
    """Each six-digit code's class at ``level`` (merged sectors for ``sector``)."""
    from naics_ml.data.codes import sector_of

    if level == "sector":
        return np.array([sector_of(str(c)) for c in codes], dtype=object)
    return np.array([str(c)[: _DIGITS[level]] for c in codes], dtype=object)


@dataclass(frozen=True)
class LevelHeads:
    """Per level: ``weights`` (H + 1, classes), the last row the bias, and ``columns`` (m,),
    the class of each six-digit candidate column."""

    weights: dict[str, Tensor]
    columns: dict[str, Tensor]

    def log_priors(self, vectors: Tensor) -> np.ndarray:
        """(n, levels, m) float64: log P_level(class of each candidate) for unit vectors (n, H)
        of the texts under the frozen base model, levels in ``LEVELS`` order."""
        x = vectors.double()
        out = []
        for level in LEVELS:
            w = self.weights[level].to(x.device, torch.float64)
            logp = torch.log_softmax(x @ w[:-1] + w[-1], dim=1)
            out.append(logp[:, self.columns[level].to(x.device)])
        return torch.stack(out, dim=1).cpu().numpy()


def fit_level_heads(
    vectors: Tensor,
    column: Tensor,
    six_codes: Sequence[str] | np.ndarray,
    cache: Path | None = None,
    l2: float = 1e-5,
    iterations: int = 100,
) -> LevelHeads:
    """One head per level on ``vectors`` (n, H) whose candidate columns are ``column`` (n,):
    mean cross-entropy plus ``l2`` times the squared weights, full-batch L-BFGS from zero (so
    the fit is deterministic). The stages of a revision share their frozen vectors, so a
    ``cache`` file keyed by a digest of the inputs spares fitting them again."""
    x = vectors.detach().float().cpu().contiguous()
    col = column.detach().cpu().numpy()
    key = _digest(x, col, six_codes, l2, iterations)
    if cache is not None and cache.is_file():
        saved = torch.load(cache, weights_only=True)
        if saved.get("key") == key:
            return LevelHeads(saved["weights"], saved["columns"])
    weights, columns = {}, {}
    for level in LEVELS:
        classes, of_column = np.unique(level_labels(six_codes, level), return_inverse=True)
        weights[level] = _fit_head(x, torch.as_tensor(of_column[col]), len(classes), l2, iterations)
        columns[level] = torch.as_tensor(of_column, dtype=torch.long)
    if cache is not None:
        atomic_save_torch({"key": key, "weights": weights, "columns": columns}, cache)
    return LevelHeads(weights, columns)


def _digest(x: Tensor, column: np.ndarray, six_codes: Sequence[str], *settings: float) -> str:
    import hashlib

    digest = hashlib.sha256(x.numpy().tobytes())
    digest.update(np.ascontiguousarray(column, dtype=np.int64).tobytes())
    digest.update(("\x00".join(map(str, [*six_codes, *settings]))).encode())
    return digest.hexdigest()


def _fit_head(x: Tensor, y: Tensor, classes: int, l2: float, iterations: int) -> Tensor:
    """(H + 1, classes) weights of one multinomial logistic regression (bias last)."""
    w = torch.zeros(x.shape[1] + 1, classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w[:-1] + w[-1], y)
        loss = loss + l2 * w[:-1].pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach()


def save_level_heads(path: Path | str, heads: LevelHeads) -> Path:
    """Write the stage's ``levels.pt``, atomically."""
    payload = {"weights": heads.weights, "columns": heads.columns}
    return atomic_save_torch(payload, StageFolder.of(path).levels)


def load_level_heads(path: Path | str) -> LevelHeads | None:
    """The stage's heads, or None when it has no ``levels.pt``."""
    file = StageFolder.of(path).levels
    if not file.is_file():
        return None
    payload = torch.load(file, weights_only=True)
    return LevelHeads(payload["weights"], payload["columns"])
