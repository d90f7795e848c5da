"""Presets: the settings that change with the kind of machine a stage trains on.

``cpu`` is the defaults themselves (``ModelConfig()`` and each stage's ``TrainConfig``), sized
for the 45-minute budget on 2 cores. ``gpu`` trades that budget for a larger model: the frozen
base is all-mpnet-base-v2 (768 dimensions, 12 layers; a name or a local folder, like any
``base_model``), LoRA on its top 6 layers with rank 16, a 768-dimensional tangent space (so the
fusion's skip path starts as the identity, as it does for MiniLM), 4x the triplet batch and the
query batch, the device chosen by ``auto`` (CUDA, else MPS, else CPU) and bfloat16 layers where
the device computes them natively. Its settings are a starting point, not measured values: no
GPU was available to tune them (docs/training.md).

A preset fills only what a stage does not set itself: a stage's own steps and loss weights stay,
and any field given explicitly (the launchpad, ``--train-config``) wins over the preset's.
Torch-free, like the configs, so the Dagster launchpad reads it without torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from naics_ml.model.config import ModelConfig
from naics_ml.training.config import TrainConfig

__all__ = ["PRESETS", "Preset", "PresetName", "get_preset"]

PresetName = Literal["cpu", "gpu"]  # the keys of PRESETS (tested), for the launchpad


@dataclass(frozen=True)
class Preset:
    """The first stage's model (a whole ``ModelConfig``) and the ``TrainConfig`` fields that
    differ from a stage's own settings."""

    name: str
    description: str
    model: ModelConfig = field(default_factory=ModelConfig)
    train: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        TrainConfig.from_dict(dict(self.train))  # unknown or invalid fields fail here
        object.__setattr__(self, "train", MappingProxyType(dict(self.train)))

    def model_config(self, settings: Mapping[str, Any]) -> ModelConfig:
        """The preset's model with ``settings`` (ModelConfig fields) taking precedence."""
        values = {**self.model.to_dict(), **settings}
        return ModelConfig.from_dict(values)

    def train_config(self, settings: Mapping[str, Any]) -> TrainConfig:
        """A stage's ``settings`` (TrainConfig fields) over the preset's over the defaults."""
        return TrainConfig.from_dict({**self.train, **settings})

    def value(self, section: str, name: str) -> Any:
        """The preset's value of ``section`` ("model" or "train") field ``name``."""
        if section == "model":
            return getattr(self.model, name)
        return self.train.get(name, getattr(TrainConfig(), name))


CPU = Preset(
    "cpu",
    "the defaults: all-MiniLM-L6-v2, LoRA on 2 layers, batch 32, float32 on the CPU",
)
GPU = Preset(
    "gpu",
    "all-mpnet-base-v2, LoRA (rank 16) on 6 of 12 layers, batch 128, device and precision auto",
    model=dataclasses.replace(
        ModelConfig(),
        base_model="sentence-transformers/all-mpnet-base-v2",
        lora_target_modules=("q", "v"),  # MPNet's names for BERT's query and value
        lora_layers=6,
        lora_r=16,
        lora_alpha=32,
        embedding_dim=768,
        expert_hidden=1536,
    ),
    train={"batch_size": 128, "query_batch_size": 1024, "device": "auto", "precision": "auto"},
)
PRESETS: Mapping[str, Preset] = MappingProxyType({p.name: p for p in (CPU, GPU)})


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ``ValueError`` naming the choices otherwise."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name]
