"""Stage checkpoints: one file per stage folder, written atomically, loadable without pickle.

``checkpoint.pt`` (:class:`naics_ml.stage_folder.StageFolder` names every file of the folder) is
rewritten every ``checkpoint_every`` steps; ``codes.parquet`` next to it is the code table the
stage was trained on, so a Classifier needs nothing else. A checkpoint holds only plain
containers, numbers, strings and tensors, so it loads with ``torch.load(weights_only=True)``:
opening a checkpoint never executes code.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from naics_ml.io import atomic_save_torch, write_parquet_atomic
from naics_ml.stage_folder import StageFolder

__all__ = [
    "capture_rng_state",
    "is_complete",
    "load_checkpoint",
    "load_stage_codes",
    "resolve_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
    "save_stage_bundle",
]

# Keys of a checkpoint dict (documentation; the dict is a plain dict):
#   model_config: dict     ModelConfig.to_dict()
#   train_config: dict     TrainConfig.to_dict()
#   model_state:  dict     NaicsModel.trainable_state_dict() (the frozen base is not stored)
#   optimizer, scheduler:  state dicts
#   step: int              optimizer iterations done (skipped ones included)
#   skipped_steps: int     iterations skipped for a non-finite loss or gradient
#   rng: dict              python / numpy / torch (and CUDA, when used) generator states (rank 0)
#   complete: bool         True once the stage ran all its steps
#   extra: dict            caller's data (curriculum, revision, ...); part of the resume identity
#   metrics: dict          last logged metrics
#   train_seconds: float   training time over all calls; world_size: int  ranks that trained


def resolve_checkpoint(path: Path | str) -> Path:
    """A stage folder or a checkpoint file -> the checkpoint file (which must exist)."""
    path = Path(path)
    file = StageFolder(path).checkpoint if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no checkpoint at {file}")
    return file


def save_checkpoint(state: dict[str, Any], path: Path | str) -> Path:
    """Atomically write a checkpoint dict (temp file in the same folder + os.replace)."""
    return atomic_save_torch(state, path)


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Load a checkpoint dict from a stage folder or file, on CPU, without unpickling code."""
    state = torch.load(resolve_checkpoint(path), map_location="cpu", weights_only=True)
    if isinstance(state.get("model_config"), dict):
        # written before ModelConfig.line_channels existed: every channel was one text
        state["model_config"].setdefault("line_channels", [])
    if isinstance(state.get("train_config"), dict):
        # written before TrainConfig.device/precision existed: trained on the CPU in float32
        state["train_config"].setdefault("device", "cpu")
        state["train_config"].setdefault("precision", "float32")
    return state


def is_complete(path: Path | str) -> bool:
    """Whether the stage folder / file holds a checkpoint of a finished stage."""
    try:
        return bool(load_checkpoint(path).get("complete", False))
    except FileNotFoundError:
        return False


def save_stage_bundle(out_dir: Path | str, codes: pl.DataFrame) -> Path:
    """Write the code table snapshot next to the checkpoint (``codes.parquet``), atomically."""
    return write_parquet_atomic(codes, StageFolder(Path(out_dir)).codes)


def load_stage_codes(path: Path | str) -> pl.DataFrame:
    """The code table saved with a stage (``path`` is the stage folder or its checkpoint file)."""
    folder = StageFolder.of(path)
    file = folder.codes
    if not file.is_file():
        raise FileNotFoundError(
            f"no {folder.CODES} in {folder.path}; write it with save_stage_bundle(out_dir, codes)"
        )
    return pl.read_parquet(file)


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy (global) and torch CPU generator states as weights_only-safe values, and
    every CUDA device's once CUDA is in use (LoRA dropout and router noise draw from it there)."""
    np_state = np.random.get_state(legacy=True)
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return {
        "python": _to_lists(random.getstate()),
        "numpy": {
            "key": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        **({"cuda": cuda} if cuda is not None else {}),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["key"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)  # a CUDA run resumed on a CUDA machine like it


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, tuple | list) else value
