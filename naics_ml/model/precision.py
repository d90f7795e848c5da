"""The number format of the transformer layers: float32, or bfloat16 autocast.

The encoder's matrix products dominate classification time. Where the hardware computes
bfloat16 natively (CPUs with AVX-512 BF16 or AMX, CUDA GPUs with compute capability 8 or more)
autocasting the transformer layers to bfloat16 is about 1.6x faster on the project's 2-core CPU
and moved every validation metric by at most 0.0055 (docs/results.md). Everything after the
layers (pooling, fusion, the Lorentz maths, the distances) stays in float32/float64. Training
uses the same switch (``TrainConfig.precision``).

torch is imported only when a setting is resolved, so ``TrainConfig`` checks its ``precision``
against :data:`PRECISIONS` without torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["PRECISIONS", "autocast_layers", "resolve_precision"]

PRECISIONS = ("float32", "bfloat16", "auto")


def resolve_precision(setting: str, device_type: str = "cpu") -> torch.dtype | None:
    """The autocast dtype for ``setting`` on ``device_type``; None = plain float32.

    ``auto`` picks bfloat16 only where it is native (else emulation would make it slower)."""
    import torch

    if setting not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {setting!r}")
    if setting == "float32":
        return None
    if setting == "bfloat16":
        return torch.bfloat16
    return torch.bfloat16 if _native_bfloat16(device_type) else None


def _native_bfloat16(device_type: str) -> bool:
    import torch

    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


@contextlib.contextmanager
def autocast_layers(device_type: str, dtype: torch.dtype | None) -> Iterator[None]:
    """Autocast to ``dtype`` inside the block; nothing when ``dtype`` is None."""
    if dtype is None:
        yield
        return
    import torch

    with torch.autocast(device_type, dtype=dtype):
        yield
