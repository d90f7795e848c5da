"""``ModelConfig``: everything needed to rebuild the model, with the one set of defaults.

Kept apart from the network (``naics_ml.model.network``, which re-exports it) so that the
Dagster launchpad config (``naics_assets.assets.stages``) reads its defaults without torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the model; the base weights come from ``base_model``."""

    base_model: str = "all-MiniLM-L6-v2"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1  # on the adapters' input; 0.1 added 0.01 validation top-1
    lora_target_modules: tuple[str, ...] = ("query", "value")
    lora_layers: int = 2  # LoRA only on the top N layers; the frozen lower layers are cached
    max_length: int = 128
    num_experts: int = 4
    top_k: int = 2
    embedding_dim: int = 384  # tangent dimension; points have embedding_dim + 1 coordinates
    curvature: float = 1.0  # geoopt's k: hyperboloid -x0^2 + |x|^2 = -k, curvature -1/k
    balance_weight: float = 0.1  # λ: loss + λ * balance_loss; at 0.01 one expert took every row
    gate_noise: float = 0.5  # std of the router-logit noise in training mode
    expert_hidden: int = 768
    max_tangent_norm: float = 12.0  # numerical safety only; radii stay far below it
    cache_dtype: str = "float16"  # dtype of the cached frozen prefix
    line_channels: tuple[str, ...] = ("examples",)  # read line by line; the lines' mean vector

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lora_target_modules"] = list(self.lora_target_modules)
        d["line_channels"] = list(self.line_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
        values = dict(d)
        for key in ("lora_target_modules", "line_channels"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)
