"""The folder a trained stage leaves, and the one place its file names are written down.

A stage folder (``storage/artifacts/<revision>/models/<stage>/``) holds everything a
:class:`naics_ml.inference.classifier.Classifier` needs, so it can be copied elsewhere::

    checkpoint.pt   trainable weights, optimizer, step, configs (naics_ml.training.checkpoint)
    codes.parquet   the code table the stage was trained on
    memory.parquet  the labelled entries the query path learned from (the entry memory)
    bank.pt         the negative bank at the final weights, for the next stage to load
    stage.json      a readable summary, written when training ended
    points.pt       every code's point and the entry memory's points, keyed to the files above
    blend.json      the Classifier's blend weights, chosen on validation data
    calibration.json  the temperature that makes predict's confidence calibrated (validation)
    levels.pt       the sector, subsector and group heads of predict's hierarchical decoding
    metrics.json    every evaluation metric; metrics.png the training curves
    confidence.png  reliability diagram (before/after calibration), selective accuracy (test)

The models folder next to the stages holds ``serving.json``: which stage ``predict`` serves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

__all__ = ["SERVING_FILE", "StageFolder", "check_stage_name"]

SERVING_FILE = "serving.json"  # in the models folder: the stage that serves predict
_STAGE_NAME = re.compile(r"stage_[0-9]{2}_[a-z]+")  # [0-9], not \d, which takes any script's digits


def check_stage_name(stage: str) -> str:
    """A stage name as one path component: ``stage_<NN>_<word>``."""
    if not _STAGE_NAME.fullmatch(stage):
        raise ValueError(f"stage name must look like 'stage_01_easy', got {stage!r}")
    return stage


@dataclass(frozen=True)
class StageFolder:
    """Paths of a stage folder's files. ``StageFolder.of`` accepts the folder or a file in it."""

    path: Path

    CHECKPOINT: ClassVar[str] = "checkpoint.pt"
    CODES: ClassVar[str] = "codes.parquet"
    MEMORY: ClassVar[str] = "memory.parquet"
    BANK: ClassVar[str] = "bank.pt"
    SUMMARY: ClassVar[str] = "stage.json"
    POINTS: ClassVar[str] = "points.pt"
    BLEND: ClassVar[str] = "blend.json"
    METRICS: ClassVar[str] = "metrics.json"
    PLOT: ClassVar[str] = "metrics.png"
    CALIBRATION: ClassVar[str] = "calibration.json"
    LEVELS: ClassVar[str] = "levels.pt"
    CONFIDENCE_PLOT: ClassVar[str] = "confidence.png"

    @classmethod
    def of(cls, path: Path | str) -> StageFolder:
        """The stage folder ``path`` is, or (a file such as the checkpoint) is in."""
        path = Path(path)
        return cls(path.parent if path.is_file() or path.suffix else path)

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    checkpoint = property(lambda self: self.file(self.CHECKPOINT))
    codes = property(lambda self: self.file(self.CODES))
    memory = property(lambda self: self.file(self.MEMORY))
    bank = property(lambda self: self.file(self.BANK))
    summary = property(lambda self: self.file(self.SUMMARY))
    points = property(lambda self: self.file(self.POINTS))
    blend = property(lambda self: self.file(self.BLEND))
    metrics = property(lambda self: self.file(self.METRICS))
    plot = property(lambda self: self.file(self.PLOT))
    calibration = property(lambda self: self.file(self.CALIBRATION))
    levels = property(lambda self: self.file(self.LEVELS))
    confidence_plot = property(lambda self: self.file(self.CONFIDENCE_PLOT))
