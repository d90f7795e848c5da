"""``TrainConfig``: every setting of one training stage, with the one set of defaults.

Kept apart from the training loop (``naics_ml.training.loop``) so that the Dagster launchpad config
(``naics_assets.assets.stages``) can read its defaults without importing torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from naics_ml.data.index_split import HELD_OUT_SPLITS
from naics_ml.data.training_texts import QUERY_SPLITS
from naics_ml.model.device import check_device
from naics_ml.model.precision import PRECISIONS


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one stage. ``batch_size``/``query_batch_size`` size the samplers."""

    steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 1e-4  # LoRA adapters; 2e-4 made radii explode in the original system
    fusion_learning_rate: float = 1e-3  # the fusion/MoE, trained from scratch (0 = learning_rate)
    weight_decay: float = 0.01  # on matrices only, not on biases / norms
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # the cosine schedule ends at learning_rate * min_lr_ratio
    grad_clip: float = 1.0
    temperature: float = 0.1
    query_batch_size: int = 256  # 32 left train queries underfit (val top-1 0.61 vs 0.68)
    query_loss_weight: float = 1.0
    seed: int = 0
    checkpoint_every: int = 100
    log_every: int = 10
    validation_every: int = 200
    max_consecutive_bad_steps: int = 5
    max_bad_steps: int = 50
    negative_bank: bool = True  # negatives from the model's bank; False = exact (module doc)
    bank_refresh_every: int = 100  # steps between full bank refreshes (0 = only at start)
    bank_live_positives: bool = False  # positives encoded live (default: from the bank)
    bank_live_query_codes: bool = False  # the queries' true codes live (False: from the bank)
    query_candidates: str = "all"  # "all" six-digit codes, or only the "step"'s codes
    # index splits that train queries, and the extra kinds of naics_ml.data.training_texts
    query_splits: tuple[str, ...] = QUERY_SPLITS
    hierarchy_loss_weight: float = 4.0  # distortion loss on sampled code pairs (0 = off)
    hierarchy_pairs: int = 3072  # pairs per step (stratified, see naics_ml.training.tree_pairs)
    hierarchy_scale: float = 0.5  # target Lorentz distance per unit of tree distance
    # where the stage trains and is evaluated (naics_ml.model.device); not part of the resume
    # identity: a stage interrupted on a GPU may resume on a CPU
    device: str = "cpu"
    # transformer layers in float32 or bfloat16 autocast (naics_ml.model.precision); float32
    # keeps CPU results as they were, "auto" is bfloat16 where the device computes it natively
    precision: str = "float32"

    def __post_init__(self) -> None:
        positive = (
            "steps",
            "batch_size",
            "checkpoint_every",
            "log_every",
            "validation_every",
            "max_consecutive_bad_steps",
            "max_bad_steps",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.fusion_learning_rate < 0:
            raise ValueError("TrainConfig.fusion_learning_rate must be >= 0 (0 = learning_rate)")
        for name in ("learning_rate", "temperature", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TrainConfig.{name} must be > 0, got {getattr(self, name)}")
        if (
            self.warmup_steps < 0
            or self.query_batch_size < 0
            or self.weight_decay < 0
            or self.bank_refresh_every < 0
        ):
            raise ValueError(
                "warmup_steps, query_batch_size, weight_decay and bank_refresh_every must be >= 0"
            )
        if self.query_candidates not in ("all", "step"):
            raise ValueError(
                "TrainConfig.query_candidates must be 'all' or 'step', "
                f"got {self.query_candidates!r}"
            )
        object.__setattr__(self, "query_splits", tuple(self.query_splits))
        leaked = set(self.query_splits) & HELD_OUT_SPLITS
        if leaked:
            raise ValueError(
                f"TrainConfig.query_splits must not include held-out splits {sorted(leaked)}"
            )
        if self.hierarchy_loss_weight < 0 or self.hierarchy_pairs < 1:
            raise ValueError("hierarchy_loss_weight must be >= 0 and hierarchy_pairs >= 1")
        if not self.hierarchy_scale > 0:
            raise ValueError(f"TrainConfig.hierarchy_scale must be > 0, got {self.hierarchy_scale}")
        check_device(self.device)
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {PRECISIONS}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-like: tuples become lists (what a checkpoint or MLflow param holds)."""
        data = asdict(self)
        data["query_splits"] = list(self.query_splits)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        return cls(**data)
