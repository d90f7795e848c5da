"""Start a stage or resume it: the loop's running state, what a checkpoint holds, and when an
unfinished checkpoint is this run's to continue (:mod:`naics_ml.training.loop`, "Resume")."""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from naics_ml.stage_folder import StageFolder
from naics_ml.training.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from naics_ml.training.config import TrainConfig
from naics_ml.training.ranks import rank_world

if TYPE_CHECKING:
    from naics_ml.model.network import NaicsModel

__all__ = [
    "RunState",
    "lr_factor",
    "make_optimizer",
    "save_run_checkpoint",
    "seed_everything",
    "start_or_resume",
]

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed python, numpy (global) and torch; before building a model, for identical weights."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier of the base learning rate at 0-based ``step``: linear warm-up, then cosine."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class RunState:
    """Everything the loop carries from step to step (and what a checkpoint records)."""

    model: NaicsModel
    config: TrainConfig
    folder: StageFolder
    identity: dict[str, Any]  # model config, train config, extra: what a resume must match
    optimizer: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LambdaLR
    rank: int
    world: int
    start: int = 0  # the step this call started from
    step: int = 0
    skipped: int = 0
    consecutive: int = 0
    earlier_seconds: float = 0.0  # training time of earlier calls (a resumed run)
    started: float = field(default_factory=time.perf_counter)
    metrics: dict[str, float] = field(default_factory=dict)  # last reported values
    window: dict[str, list[float]] = field(default_factory=dict)  # since the last log
    bank_refresh_s: float = math.nan
    clock: tuple[float, int] = (0.0, 0)  # (time, step) of the last log, for steps_per_s
    step_lrs: tuple[float, float] = (0.0, 0.0)  # adapters' and fusion's lr of the last step

    @property
    def trainable(self) -> list[Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]


def start_or_resume(
    model: NaicsModel,
    config: TrainConfig,
    folder: StageFolder,
    init_from: Path | None,
    extra: dict[str, Any],
) -> RunState:
    """Continue a matching unfinished checkpoint, or start fresh (from ``init_from``)."""
    rank, world = rank_world()
    identity = _json_normal(
        {"model_config": model.config.to_dict(), "train_config": config.to_dict(), "extra": extra}
    )
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, config.warmup_steps, config.steps, config.min_lr_ratio)
    )
    run = RunState(model, config, folder, identity, optimizer, scheduler, rank, world)
    state = _resumable(folder.checkpoint, identity)
    if state is not None:
        model.load_trainable_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        run.start = run.step = int(state["step"])
        run.skipped = int(state["skipped_steps"])
        run.earlier_seconds = float(state.get("train_seconds", 0.0))
        run.metrics = dict(state.get("metrics", {}))
        restore_rng_state(state["rng"])
        if world > 1:  # the saved state is rank 0's; give the other ranks their own streams
            torch.manual_seed(config.seed + 1_000_003 * rank + run.start)
        log.info("resuming %s from step %d (%d skipped)", folder.path, run.step, run.skipped)
    else:
        if init_from is not None:
            model.load_trainable_state_dict(load_checkpoint(init_from)["model_state"])
            log.info("initialised trainable weights from %s", init_from)
        seed_everything(config.seed + 1_000_003 * rank)
        if rank == 0:  # an older run's files, not these weights'
            folder.summary.unlink(missing_ok=True)
            folder.bank.unlink(missing_ok=True)
    if world > 1:
        for tensor in run.trainable:
            dist.broadcast(tensor.data, src=0)
        dist.barrier()
    return run


def save_run_checkpoint(run: RunState) -> None:
    """The checkpoint dict (model args, config, weights, optimizer, step, RNG), rank 0 only."""
    if run.rank == 0:
        state = {
            "model_config": run.model.config.to_dict(),
            "train_config": run.identity["train_config"],
            "model_state": {
                k: v.detach().cpu() for k, v in run.model.trainable_state_dict().items()
            },
            "optimizer": _on_cpu(run.optimizer.state_dict()),  # loads on any machine
            "scheduler": run.scheduler.state_dict(),
            "step": run.step,
            "skipped_steps": run.skipped,
            "rng": capture_rng_state(),
            "complete": run.step == run.config.steps,
            "extra": run.identity["extra"],
            "metrics": dict(run.metrics),
            "train_seconds": run.earlier_seconds + time.perf_counter() - run.started,
            "world_size": run.world,
        }
        save_checkpoint(state, run.folder.checkpoint)
    if run.world > 1:
        dist.barrier()


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (biases and norm scales are not shrunk); the fusion
    (new weights) gets ``fusion_learning_rate``, the LoRA adapters ``learning_rate``."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    fusion_lr = config.fusion_learning_rate or config.learning_rate
    groups = []
    for is_fusion, lr in ((False, config.learning_rate), (True, fusion_lr)):
        chosen = [(n, p) for n, p in params if n.startswith("fusion.") == is_fusion]
        for decay in (True, False):
            group = [p for _, p in chosen if (p.dim() >= 2) == decay]
            if group:
                groups.append(
                    {"params": group, "lr": lr, "weight_decay": config.weight_decay * decay}
                )
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.999))


def _on_cpu(value: Any) -> Any:
    """``value`` with every tensor in its dicts and lists copied to the CPU."""
    if isinstance(value, Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_on_cpu(v) for v in value)
    return value


def _json_normal(value: Any) -> Any:
    """Tuples -> lists etc., so identities compare equal after a round trip through a file."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _without_device(identity: dict[str, Any]) -> dict[str, Any]:
    """The identity minus the device: where a stage runs is not what it trains."""
    train = {k: v for k, v in (identity.get("train_config") or {}).items() if k != "device"}
    return {**identity, "train_config": train}


def _resumable(ckpt_file: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint to resume from, or None (missing, complete, or another configuration)."""
    if not ckpt_file.is_file():
        return None
    state = load_checkpoint(ckpt_file)
    if state.get("complete", False):
        log.info("%s holds a finished stage; training again from scratch", ckpt_file)
        return None
    found = _json_normal(
        {
            "model_config": state.get("model_config"),
            "train_config": state.get("train_config"),
            "extra": state.get("extra", {}),
        }
    )
    if _without_device(found) != _without_device(identity):
        log.warning("%s was written with another configuration; starting over", ckpt_file)
        return None
    return state
