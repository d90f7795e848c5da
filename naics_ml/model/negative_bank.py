"""The negative bank: every code's four pooled channel vectors, kept between training steps.

A step names ~500 distinct codes (all 2,125 with the hierarchy loss), but encoding each live
through the LoRA layers costs ~8 s on 2 cores. With the bank only the anchors (and, when asked,
the positives and the queries' true codes) run live; the other codes' channel vectors are read
from here (MoCo-style keys). The fusion and the exponential map still run with gradients on
every code. What is approximated: the negatives' gradients do not reach the LoRA adapters, and
their vectors are up to ``TrainConfig.bank_refresh_every`` steps stale. A live code's row is
overwritten each time it is encoded.

The bank knows whether it is *current*: the trainable weights' in-place version counters have
not moved since it was filled, and no live row was written since. A current bank equals what a
fresh encoding in eval mode would give, so validation and evaluation read it instead of running
the transformer again. A finished stage saves its current bank keyed by a hash of every weight,
the model config and the code texts; the next stage, starting from the same weights, loads it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor

from naics_ml.io import atomic_save_torch

__all__ = ["NegativeBank"]

log = logging.getLogger(__name__)


class NegativeBank:
    """Rows (n_codes, channels, hidden) float32 and the weight versions they were computed at."""

    def __init__(self) -> None:
        self.rows: Tensor | None = None
        self._versions: tuple[int, ...] = ()  # trainable weights' versions when filled

    @property
    def filled(self) -> bool:
        return self.rows is not None

    def fill(self, rows: Tensor, versions: tuple[int, ...]) -> None:
        """Adopt freshly computed rows for every code, at these weight versions."""
        self.rows = rows.float()
        self._versions = versions

    def clear(self) -> None:
        self.rows = None
        self._versions = ()

    def to(self, device: torch.device) -> None:
        """Keep the rows on ``device`` (the model's); still current if they were."""
        if self.rows is not None:
            self.rows = self.rows.to(device)

    def is_current(self, versions: tuple[int, ...]) -> bool:
        """Filled, no live row written since, and the weights still at ``versions``."""
        return self.rows is not None and bool(self._versions) and self._versions == versions

    def overwrite(self, index: Tensor, fresh: Tensor) -> None:
        """Write live (training-mode) rows: the bank is no longer what a refresh would give."""
        self.rows[index] = fresh.detach().float()
        self._versions = ()

    def save(self, path: Path | str, key: str) -> Path:
        """Write the rows with the key of the model state they belong to, atomically."""
        return atomic_save_torch({"key": key, "bank": self.rows.cpu()}, path)

    def load(
        self, path: Path | str, key: str, shape: tuple[int, ...], versions: tuple[int, ...]
    ) -> bool:
        """Adopt a saved bank (on the CPU) whose key and shape match; False (nothing changed)
        for a missing, unreadable or mismatched file: it is a cache, never a reason to fail."""
        path = Path(path)
        if not path.is_file():
            return False
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            saved_key, rows = state["key"], state["bank"]
        except Exception as error:
            log.warning("negative bank %s unreadable (%s); refreshing instead", path, error)
            return False
        if saved_key != key or tuple(rows.shape) != shape:
            return False
        self.fill(rows, versions)
        return True
