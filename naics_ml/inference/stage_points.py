"""The points a Classifier embeds when it loads, saved next to a stage so that loading is quick.

Embedding 2,125 codes and ~15k memory entries costs over a minute on a 2-core CPU, yet the
points are a pure function of the stage's files. The stage asset therefore saves them once as
``points.pt``, and ``Classifier.from_checkpoint`` reuses them while the checkpoint, the code table
and the memory they came from are byte-identical (a SHA-256 over the three files, recorded in
``points.pt``). A re-trained checkpoint or an edited memory makes them stale: they are then
ignored and the classifier embeds afresh.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from naics_ml.io import atomic_save_torch
from naics_ml.stage_folder import StageFolder

__all__ = [
    "StagePoints",
    "load_stage_points",
    "save_stage_points",
    "stage_fingerprint",
]


@dataclass(frozen=True)
class StagePoints:
    """Hyperboloid points of every code (``index`` order) and, if saved, of every memory entry
    (``memory.parquet`` row order); ``base``: the frozen base model's unit vectors of the
    six-digit code texts, then the memory entries (``Classifier`` base part); ``exclusions``:
    its unit vectors of every excluded activity (``ExclusionIndex.activities`` order)."""

    codes: Tensor
    memory: Tensor | None
    base: Tensor | None = None  # frozen base-model vectors of the base part's texts
    exclusions: Tensor | None = None  # frozen base-model vectors of the excluded activities


POINT_FILES = (StageFolder.CHECKPOINT, StageFolder.CODES, StageFolder.MEMORY)


def stage_fingerprint(path: Path | str, files: tuple[str, ...] = POINT_FILES) -> str:
    """SHA-256 over the stage ``files`` (by default those the points depend on); a missing file
    counts as empty."""
    folder = StageFolder.of(path)
    digest = hashlib.sha256()
    for name in files:
        file = folder.path / name
        digest.update(name.encode() + b"\x00")
        if file.is_file():
            with file.open("rb") as handle:
                hashlib.file_digest(handle, lambda: digest)  # feeds the shared digest
        digest.update(b"\x01")
    return digest.hexdigest()


def save_stage_points(path: Path | str, points: StagePoints) -> Path:
    """Write ``points.pt`` for the stage's current files, atomically."""
    folder = StageFolder.of(path)
    state = {
        "fingerprint": stage_fingerprint(folder.path),
        "codes": _floats(points.codes),
        "memory": _floats(points.memory),
        "base": _floats(points.base),
        "exclusions": _floats(points.exclusions),
    }
    return atomic_save_torch(state, folder.points)


def load_stage_points(path: Path | str) -> StagePoints | None:
    """The saved points if they match the stage's current files, else None (missing or stale)."""
    folder = StageFolder.of(path)
    file = folder.points
    if not file.is_file():
        return None
    state = torch.load(file, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != stage_fingerprint(folder.path):
        return None
    return StagePoints(
        codes=state["codes"],
        memory=state.get("memory"),
        base=state.get("base"),
        exclusions=state.get("exclusions"),
    )


def _floats(tensor: Tensor | None) -> Tensor | None:
    """float32 on the CPU: the file loads on any machine."""
    return None if tensor is None else tensor.detach().cpu().float().contiguous()
