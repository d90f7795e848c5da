"""The tiny randomly initialised BERT the unit tests train in seconds, with the MiniLM tokenizer,
and a tiny MPNet (all-mpnet-base-v2's architecture, the GPU preset's base) built the same way."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import BertConfig, BertModel, MPNetConfig, MPNetModel

from naics_ml.model.base import load_tokenizer


def tiny_bert(vocab_size: int, seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    return BertModel(config)


def tiny_mpnet(vocab_size: int, seed: int = 0, layers: int = 2) -> MPNetModel:
    torch.manual_seed(seed)
    config = MPNetConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
    )
    return MPNetModel(config)


def save_tiny_mpnet(folder: Path, layers: int = 12) -> Path:
    """A tiny MPNet with all-mpnet-base-v2's 12 layers, as a local base-model folder."""
    tokenizer = load_tokenizer("all-MiniLM-L6-v2")
    tiny_mpnet(tokenizer.vocab_size, layers=layers).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """Model and tokenizer saved as a local base-model folder (what ``base_model`` accepts)."""
    tokenizer = load_tokenizer("all-MiniLM-L6-v2")
    tiny_bert(tokenizer.vocab_size, seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
