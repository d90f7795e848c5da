"""The curriculum stages, in one table: each stage's name, the stage it starts from, its
packaged curriculum and the training settings that differ from ``TrainConfig``'s defaults.

Everything that names a stage reads this table: the Dagster stage assets (built from it by one
factory), the launchpad's defaults, the CLI, the MLflow run table, ``naics_embeddings`` and the
torchrun entry (``--stage``). Torch-free, so the Dagster code location imports it cheaply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from naics_ml.stage_folder import check_stage_name
from naics_ml.training.config import TrainConfig

__all__ = [
    "FINAL_STAGE",
    "STAGES",
    "STAGE_NAMES",
    "StageSpec",
    "stage_spec",
]


@dataclass(frozen=True)
class StageSpec:
    """One curriculum stage. ``train`` holds the ``TrainConfig`` fields this stage sets itself
    (a preset or the launchpad fills the rest); ``model`` is true for the stage that starts
    from the base model and so takes model settings (later stages inherit their checkpoint's)."""

    name: str  # the asset, the stage folder and the MLflow run's suffix
    previous: str | None  # the stage whose weights this one starts from
    curriculum: str  # a packaged curriculum (naics_ml/triplets/curricula/<name>.yaml)
    summary: str  # one line: what the stage trains on
    train: Mapping[str, Any] = field(default_factory=dict)
    why: str = ""  # the reason for its settings, where they differ from the defaults

    def __post_init__(self) -> None:
        check_stage_name(self.name)
        TrainConfig.from_dict(dict(self.train))  # unknown or invalid fields fail here
        object.__setattr__(self, "train", MappingProxyType(dict(self.train)))

    @property
    def model(self) -> bool:
        return self.previous is None


STAGES: tuple[StageSpec, ...] = (
    StageSpec(
        "stage_01_easy",
        None,
        "01_easy",
        "Sibling six-digit codes against easy negatives, from the frozen base model.",
        {"steps": 200},
        why="739 (anchor, positive) pairs: about 9 passes at batch 32.",
    ),
    StageSpec(
        "stage_02_medium",
        "stage_01_easy",
        "02_medium",
        "Five- and six-digit codes, closer negatives; starts from stage 1's weights.",
        {"steps": 300},
    ),
    StageSpec(
        "stage_03_hard",
        "stage_02_medium",
        "03_hard",
        "All levels, hardest negatives and exclusions; starts from stage 2's weights.",
        {"steps": 600, "hierarchy_loss_weight": 60.0, "query_loss_weight": 2.0},
        why="Its exclusion and same-sector negatives pull against the tree, so the stress "
        "weighs more, and the query loss too, to keep retrieval (chosen on validation; "
        "docs/results.md).",
    ),
)
STAGE_NAMES: tuple[str, ...] = tuple(spec.name for spec in STAGES)
FINAL_STAGE = STAGE_NAMES[-1]  # the end of the curriculum: the embedding's coordinates


def stage_spec(name: str) -> StageSpec:
    """The table's row for ``name``; the error lists the stages there are."""
    for spec in STAGES:
        if spec.name == name:
            return spec
    raise KeyError(f"unknown stage {name!r}; the stages are {', '.join(STAGE_NAMES)}")
