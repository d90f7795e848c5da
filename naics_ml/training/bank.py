"""Training's negative bank: every code's pooled channel vectors at recent weights, so a step
encodes only its anchors live and takes positives and negatives from the bank (docs/model.md,
"Negative bank"). The model holds the rows (``NaicsModel.bank``, which ``encode_codes`` reads);
filling, refreshing, keying, saving and loading them is training's, here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from naics_ml.model.channels import CHANNELS
from naics_ml.model.encoder import digest_tensors

if TYPE_CHECKING:
    from naics_ml.model.network import NaicsModel

__all__ = ["bank_is_current", "bank_key", "load_bank", "refresh_bank", "save_bank"]


@torch.no_grad()
def refresh_bank(model: NaicsModel, batch_size: int = 512) -> None:
    """(Re)compute every code's pooled channel vectors with the current adapters.

    Runs in eval mode (no LoRA dropout), so a row equals the live encoding of the code right
    after the refresh. ~13 MB for 2,125 codes with MiniLM.
    """
    prepared = model.prepared
    if prepared is None:
        raise RuntimeError("call NaicsModel.prepare(...) before refreshing the bank")
    with model.eval_mode():
        n, hidden = prepared.num_codes, model.encoder.hidden_size
        bank = torch.zeros(n, len(CHANNELS), hidden, dtype=torch.float32, device=model.device)
        for start in range(0, n, batch_size):
            rows = prepared.code_slots[start : start + batch_size]
            bank[start : start + len(rows)] = model.channel_vectors(rows).float()
        model.bank.fill(bank, model.trainable_versions())


def bank_is_current(model: NaicsModel) -> bool:
    """True while no trainable weight changed since the last :func:`refresh_bank`.

    Read from the weights' in-place version counters (``NaicsModel.trainable_versions``), so a
    caller cannot forget to invalidate the bank. A live encoding that overwrites rows (a
    training step) also ends it. While current, the exact path of ``encode_codes`` in eval
    mode without gradients (validation, the final evaluation) reads the bank instead of
    running the transformer again.
    """
    return model.bank.is_current(model.trainable_versions())


def bank_key(model: NaicsModel) -> str:
    """SHA-256 of everything a bank row depends on: every weight (frozen and trainable), the
    model config and the prepared code texts."""
    if model.code_fingerprint is None:
        raise RuntimeError("call NaicsModel.prepare(...) before keying the bank")
    digest = hashlib.sha256()
    digest.update(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    digest.update(model.code_fingerprint.encode())
    digest_tensors(digest, dict(sorted(model.state_dict().items())))
    return digest.hexdigest()


def save_bank(model: NaicsModel, path: Path | str) -> Path | None:
    """Write a current bank (:func:`bank_is_current`) with its :func:`bank_key`, so the next
    stage, which starts from these weights, loads it instead of refreshing (15 to 28 s on 2
    cores). Returns None, writing nothing, when there is no current bank."""
    if not bank_is_current(model):
        return None
    return model.bank.save(path, bank_key(model))


def load_bank(model: NaicsModel, path: Path | str) -> bool:
    """Adopt a bank saved by :func:`save_bank` if its key matches ``model`` (same weights,
    config and code texts): it then equals what :func:`refresh_bank` would compute. False
    (nothing changed) for a missing, unreadable or mismatched file."""
    shape = (model.num_codes, len(CHANNELS), model.encoder.hidden_size)
    loaded = model.bank.load(path, bank_key(model), shape, model.trainable_versions())
    model.bank.to(model.device)
    return loaded
