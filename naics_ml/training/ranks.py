"""Where a training process runs: its rank and world size, its device, and the one all-reduce
per step that averages gradients and loss values over the ranks of a torchrun job."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor

from naics_ml.model.device import resolve_device
from naics_ml.model.precision import resolve_precision
from naics_ml.training.config import TrainConfig

if TYPE_CHECKING:
    from naics_ml.model.network import NaicsModel

__all__ = ["place_model", "rank_device", "rank_world", "sync_gradients"]


def rank_device(setting: str) -> torch.device:
    """The device this process trains on: ``setting`` resolved (``naics_ml.model.device``);
    under torchrun (WORLD_SIZE > 1) each rank of a CUDA job takes cuda:LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else None
    return resolve_device(setting, local)


def place_model(model: NaicsModel, config: TrainConfig) -> torch.device:
    """Move ``model`` (and what it prepared) to the stage's device and set the precision of
    its transformer layers; a model already there is left untouched."""
    device = rank_device(config.device)
    if model.device != device:
        model.to(device)
    model.encoder.layer_dtype = resolve_precision(config.precision, device.type)
    return device


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def sync_gradients(
    params: list[Tensor], values: Tensor, bad: bool, world: int
) -> tuple[bool, Tensor]:
    """Average gradients and loss values over ranks with one all-reduce; any bad rank -> all bad.

    Single process: just report. A bad rank contributes zero gradients but still joins the
    collective, so ranks never deadlock.
    """
    if world <= 1:
        return bad, values
    grads = [torch.zeros_like(p) if (bad or p.grad is None) else p.grad.detach() for p in params]
    flat = torch.cat(
        [g.reshape(-1).double() for g in grads]
        + [torch.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0), values.new_tensor([bad])]
    )
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    bad_any = bool(flat[-1] > 0)
    if not bad_any:
        offset = 0
        for p in params:
            size = p.numel()
            p.grad = (flat[offset : offset + size] / world).view_as(p).to(p.dtype)
            offset += size
    return bad_any, flat[-1 - len(values) : -1] / world


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
