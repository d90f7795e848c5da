"""Where the model runs: one ``device`` setting for training, evaluation and the Classifier.

``auto`` is CUDA when available, else Apple MPS, else the CPU; ``cpu``, ``cuda``, ``cuda:N`` and
``mps`` name a device, and one that this machine lacks is an error naming the setting (never a
silent fall back to the CPU: a job asked for a GPU should not quietly take hours). Under torchrun
every rank of a CUDA job takes ``cuda:LOCAL_RANK`` (``local_rank``).

The module imports torch only when a setting is resolved, so ``TrainConfig`` checks the syntax of
its ``device`` without torch (the Dagster launchpad reads its defaults without the slow import).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICE_SETTINGS", "check_device", "resolve_device"]

DEVICE_SETTINGS = ("auto", "cpu", "cuda", "cuda:N", "mps")
_SYNTAX = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device(setting: str) -> str:
    """``setting`` itself when it is one of :data:`DEVICE_SETTINGS`, else ``ValueError``."""
    if not isinstance(setting, str) or not _SYNTAX.fullmatch(setting):
        raise ValueError(f"device must be one of {DEVICE_SETTINGS}, got {setting!r}")
    return setting


def resolve_device(setting: str, local_rank: int | None = None) -> torch.device:
    """The torch device of ``setting`` on this machine; ``ValueError`` naming the setting when
    an explicit device is unavailable. ``local_rank`` (torchrun's LOCAL_RANK, data-parallel
    jobs only) picks each rank's own GPU, so ``cuda:N`` is refused with it."""
    import torch

    check_device(setting)
    if setting == "auto":
        if torch.cuda.is_available():
            return _cuda("cuda", local_rank)
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if setting.startswith("cuda"):
        return _cuda(setting, local_rank)
    if setting == "mps" and not _mps_available():
        raise ValueError(
            "device 'mps': Apple MPS is not available on this machine; use 'auto' or 'cpu'"
        )
    return torch.device(setting)


def _cuda(setting: str, local_rank: int | None) -> torch.device:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ValueError(
            f"device {setting!r}: CUDA is not available on this machine (torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda}); use 'auto' or 'cpu'"
        )
    if local_rank is not None and ":" in setting:
        raise ValueError(
            f"device {setting!r}: under torchrun each rank takes cuda:LOCAL_RANK; "
            "use 'cuda' or 'auto'"
        )
    index = int(setting.split(":")[1]) if ":" in setting else (local_rank or 0)
    if index >= count:
        rank = "" if local_rank is None else f" (torchrun LOCAL_RANK {local_rank})"
        raise ValueError(
            f"device {setting!r}{rank}: this machine has {count} CUDA device(s), "
            f"cuda:0 to cuda:{count - 1}"
        )
    return torch.device("cuda", index)


def _mps_available() -> bool:
    import torch

    return bool(torch.backends.mps.is_available())
