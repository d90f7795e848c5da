"""The NAICS embedding model: shared frozen encoder + LoRA channels, MoE fusion, Lorentz output."""

from naics_ml.model.base import load_base_model, load_tokenizer, resolve_base_model
from naics_ml.model.loss import hyperbolic_info_nce, load_balance_loss
from naics_ml.model.network import CHANNELS, Encoded, ModelConfig, NaicsModel

__all__ = [
    "CHANNELS",
    "Encoded",
    "ModelConfig",
    "NaicsModel",
    "hyperbolic_info_nce",
    "load_balance_loss",
    "load_base_model",
    "load_tokenizer",
    "resolve_base_model",
]
