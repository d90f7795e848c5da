"""One training loop for one curriculum stage: seeded, checkpointed, resumable, NaN-guarded.

Per step: a triplet batch (and a batch of index-entry queries) -> the stage's loss
(:class:`naics_ml.training.objective.StageObjective`) -> backward -> gradient clip -> AdamW with a
cosine schedule after a linear warm-up. A non-finite loss or gradient skips the update (the step
counter and schedule still advance); ``max_consecutive_bad_steps`` in a row or ``max_bad_steps``
in total raise :class:`NonFiniteLossError`. Every ``log_every`` steps the window's mean metrics
go to ``on_metrics``; every ``validation_every`` steps ``validate`` runs; every
``checkpoint_every`` steps the checkpoint is rewritten atomically. The negative bank is
refreshed every ``bank_refresh_every`` steps and before a validation of the last step, so
validation never reads a stale bank (docs/model.md, "Negative bank").

Resume: an *incomplete* ``checkpoint.pt`` whose identity (model config, train config, ``extra``)
equals this call's continues from its step, weights, optimizer, scheduler and RNG state
(``init_from`` is ignored then). Anything else trains from scratch, from ``init_from``'s weights
if given: a new materialisation is a request for a new run. Batch streams are passed in as
factories ``start_step -> iterable``, so a resumed run continues its stream deterministically;
it is bit-identical to an uninterrupted one when ``checkpoint_every`` is a multiple of
``bank_refresh_every``.

Data parallel (torchrun, :mod:`naics_ml.training.distributed`): every rank draws its own
batches; gradients, loss values and the "bad step" flag are averaged with one all-reduce per
step; the weights are broadcast from rank 0 at start; only rank 0 writes files and reports.

Device and precision (``TrainConfig.device``/``precision``): the model, with its prefix cache and
negative bank, the optimizer state and every batch tensor live on the stage's device
(:func:`rank_device`); the transformer layers autocast to bfloat16 when ``precision`` asks for
it (the Lorentz maths stays float32/float64). Checkpoints hold CPU tensors only, so a stage
trained on a GPU loads, evaluates and resumes anywhere; the device is not part of the resume
identity.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from naics_ml.io import atomic_write_text
from naics_ml.model.device import resolve_device
from naics_ml.model.lorentz import check_on_manifold
from naics_ml.model.precision import resolve_precision
from naics_ml.stage_folder import StageFolder
from naics_ml.training.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    save_stage_bundle,
)
from naics_ml.training.config import TrainConfig
from naics_ml.training.objective import StageObjective, StepLoss

if TYPE_CHECKING:
    from naics_ml.model.network import NaicsModel

__all__ = [
    "NonFiniteLossError",
    "StageData",
    "StageHooks",
    "StageResult",
    "TrainConfig",
    "lr_factor",
    "place_model",
    "rank_device",
    "rank_world",
    "seed_everything",
    "train_stage",
]

log = logging.getLogger(__name__)

BatchSource = Iterable[Any] | Callable[[int], Iterable[Any]]


@dataclass(frozen=True)
class StageData:
    """What a stage trains on. ``triplets`` and ``queries`` are iterables or factories
    ``start_step -> iterable``; ``query_codes[i]`` is the code index of prepared query ``i``;
    ``codes`` (the code table) is saved with the checkpoint and feeds the hierarchy loss."""

    triplets: BatchSource
    queries: BatchSource | None = None
    query_codes: np.ndarray | None = None
    codes: pl.DataFrame | None = None


@dataclass(frozen=True)
class StageHooks:
    """What the caller sees of a running stage: validation, metrics, a progress bar."""

    validate: Callable[[NaicsModel], dict[str, float]] | None = None
    on_metrics: Callable[[int, dict[str, float]], None] | None = None
    progress: bool = True


@dataclass(frozen=True)
class StageResult:
    """What a stage produced: the checkpoint (``out_dir/checkpoint.pt``) and its numbers."""

    checkpoint: Path
    steps: int
    skipped_steps: int
    metrics: dict[str, float] = field(default_factory=dict)  # last logged + validation values
    wall_time_s: float = 0.0  # this call only
    resumed_from: int = 0  # step the run continued from (0 = fresh start)
    # the trained, prepared model, so that an evaluation right after training need not rebuild
    # and re-prepare it from the checkpoint
    model: Any = field(default=None, repr=False, compare=False)


class NonFiniteLossError(RuntimeError):
    """Too many steps had a non-finite loss or gradient; the stage stops."""

    def __init__(self, step: int, consecutive: int, total: int, reason: str) -> None:
        super().__init__(
            f"non-finite {reason} at step {step}: {consecutive} consecutive and {total} total "
            "skipped steps reached the limit (TrainConfig.max_consecutive_bad_steps / "
            "max_bad_steps); lower the learning rate or check the data"
        )
        self.step, self.consecutive, self.total = step, consecutive, total


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
class _Run:
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


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------
def train_stage(
    model: NaicsModel,
    data: StageData,
    config: TrainConfig,
    out_dir: Path,
    init_from: Path | None = None,
    hooks: StageHooks = StageHooks(),
    extra: dict[str, Any] | None = None,
) -> StageResult:
    """Train ``model``'s trainable parameters for ``config.steps`` steps; see the module doc.

    ``model`` must be prepared (``model.prepare``) for all codes and, with queries, for the
    query texts. ``extra`` (JSON-like) is stored in the checkpoint and is part of the resume
    identity.
    """
    if data.queries is not None and data.query_codes is None:
        raise ValueError("queries need query_codes (the code index of every prepared query)")
    place_model(model, config)
    # -- resume or start: weights, optimizer, RNG; the data streams from that step ------------
    run = _resume_or_start(model, config, StageFolder(Path(out_dir)), init_from, extra or {})
    objective = StageObjective(model, config, data.codes, data.query_codes)
    if run.rank == 0 and data.codes is not None:
        save_stage_bundle(run.folder.path, data.codes)
    triplets = _open(data.triplets, run.start)
    queries = _open(data.queries, run.start) if data.queries is not None else None
    bar = _progress_bar(run, hooks.progress)
    if config.negative_bank:
        run.bank_refresh_s = _start_bank(model, init_from if run.start == 0 else None)
    run.clock = (time.perf_counter(), run.start)
    model.train()
    try:
        while run.step < config.steps:
            # -- one optimizer step --------------------------------------------------------
            batch = _next(triplets, "triplets", run.step)
            query_ids = _next(queries, "queries", run.step) if queries is not None else None
            loss, values, grad_norm = _optimizer_step(run, objective, batch, query_ids)
            bar.update(1)
            # -- log, validate, checkpoint -------------------------------------------------
            metrics = _window_metrics(run, objective, (loss, values, grad_norm))
            validating = hooks.validate is not None and (
                run.step % config.validation_every == 0 or run.step == config.steps
            )
            if _refresh_due(config, run.step, validating):  # before validation, which reads it
                run.bank_refresh_s = _refresh_bank(model)
            if validating:  # every rank validates (no collective inside); rank 0 reports it
                metrics.update(_run_validation(model, hooks.validate))
            if metrics and run.rank == 0:
                _report(run, metrics, bar, hooks.on_metrics)
            run.metrics.update(metrics)
            if run.step % config.checkpoint_every == 0 or run.step == config.steps:
                _save_checkpoint(run)
    finally:
        bar.close()
    # -- finish: the bank for the next stage, the summary -------------------------------------
    return _finish(run)


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


def _resume_or_start(
    model: NaicsModel,
    config: TrainConfig,
    folder: StageFolder,
    init_from: Path | None,
    extra: dict[str, Any],
) -> _Run:
    """Continue a matching unfinished checkpoint, or start fresh (from ``init_from``)."""
    rank, world = rank_world()
    identity = _json_normal(
        {"model_config": model.config.to_dict(), "train_config": config.to_dict(), "extra": extra}
    )
    optimizer = _make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, config.warmup_steps, config.steps, config.min_lr_ratio)
    )
    run = _Run(model, config, folder, identity, optimizer, scheduler, rank, world)
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


def _optimizer_step(
    run: _Run, objective: StageObjective, batch: Any, query_ids: np.ndarray | None
) -> tuple[StepLoss, Tensor, float]:
    """Loss, backward, all-reduce, clip, AdamW step (or a counted skip), schedule step."""
    run.optimizer.zero_grad(set_to_none=True)
    loss = objective(run.model, batch, query_ids, run.step, run.rank)
    bad = not bool(torch.isfinite(loss.total))
    if not bad:
        loss.total.backward()
    bad, values = _sync_gradients(run.trainable, loss.logged_values(), bad, run.world)
    reason, grad_norm = "loss", math.nan
    if not bad:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(run.trainable, run.config.grad_clip))
        if not math.isfinite(grad_norm):
            bad, reason = True, "gradient"
    run.step += 1
    if bad:
        run.optimizer.zero_grad(set_to_none=True)
        run.consecutive += 1
        run.skipped += 1
        log.warning(
            "step %d: non-finite %s, step skipped (%d total)", run.step, reason, run.skipped
        )
        if (
            run.consecutive >= run.config.max_consecutive_bad_steps
            or run.skipped >= run.config.max_bad_steps
        ):
            raise NonFiniteLossError(run.step, run.consecutive, run.skipped, reason)
    else:
        run.consecutive = 0
        run.optimizer.step()
    groups = run.optimizer.param_groups
    run.step_lrs = (float(groups[0]["lr"]), float(groups[-1]["lr"]))  # what this step used
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()" after a skip
        warnings.simplefilter("ignore", UserWarning)
        run.scheduler.step()
    return loss, values, (math.nan if bad else grad_norm)


def _window_metrics(
    run: _Run, objective: StageObjective, outcome: tuple[StepLoss, Tensor, float]
) -> dict[str, float]:
    """Adds a good step's values to the window; at a log step, the window's means."""
    loss, values, grad_norm = outcome
    if math.isfinite(grad_norm):
        _accumulate(run.window, objective.step_metrics(loss, values, grad_norm))
        if run.step % run.config.log_every == 0:
            check_on_manifold(loss.points.detach(), objective.curvature)
    if run.step % run.config.log_every and run.step != run.config.steps:
        return {}
    metrics = {k: float(np.mean(v)) for k, v in run.window.items()}
    run.window.clear()
    metrics["lr"], metrics["fusion_lr"] = run.step_lrs
    metrics["skipped_steps"] = float(run.skipped)
    if run.config.negative_bank:
        metrics["bank_refresh_s"] = run.bank_refresh_s
    clock, clock_step = run.clock
    metrics["steps_per_s"] = (run.step - clock_step) / max(time.perf_counter() - clock, 1e-9)
    run.clock = (time.perf_counter(), run.step)
    return metrics


def _save_checkpoint(run: _Run) -> None:
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


def _finish(run: _Run) -> StageResult:
    """Save the final bank (when current) and the readable summary; the stage's result."""
    wall = time.perf_counter() - run.started
    if run.rank == 0 and run.config.negative_bank and run.step == run.config.steps:
        run.model.save_bank(run.folder.bank)  # only a current one (the last step validated)
    if run.rank == 0:
        summary = {
            "checkpoint": str(run.folder.checkpoint),
            "steps": run.step,
            "skipped_steps": run.skipped,
            "resumed_from": run.start,
            "wall_time_s": wall,
            "train_seconds": run.earlier_seconds + wall,
            "metrics": dict(run.metrics),
            **run.identity,
        }
        atomic_write_text(run.folder.summary, json.dumps(summary, indent=2, default=str))
    return StageResult(
        run.folder.checkpoint, run.step, run.skipped, dict(run.metrics), wall, run.start
    )


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _sync_gradients(
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


def _report(
    run: _Run,
    metrics: dict[str, float],
    bar: Any,
    on_metrics: Callable[[int, dict[str, float]], None] | None,
) -> None:
    """Progress line, progress-bar postfix and the caller's metrics callback (rank 0)."""
    if "lr" in metrics:
        rate, loss = metrics["steps_per_s"], metrics.get("loss", math.nan)
        eta = (run.config.steps - run.step) / max(rate, 1e-9)
        line = "step %d/%d loss %.4f lr %.2e %.2f steps/s eta %.0fs"
        log.info(line, run.step, run.config.steps, loss, metrics["lr"], rate, eta)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{metrics['lr']:.2e}")
    if on_metrics is not None:
        on_metrics(run.step, dict(metrics))


def _progress_bar(run: _Run, progress: bool) -> Any:
    return tqdm(
        total=run.config.steps,
        initial=run.start,
        desc=run.folder.name or "train",
        file=sys.stderr,
        disable=not progress or run.rank != 0,
        dynamic_ncols=True,
        mininterval=1.0,
    )


def _refresh_due(config: TrainConfig, step: int, validating: bool) -> bool:
    """Whether the bank is rebuilt after ``step``'s update.

    Every ``bank_refresh_every`` steps (the next steps' negatives), and after the last step when
    it is validated: validation and the final evaluation then read every code from the fresh
    bank (:meth:`NaicsModel.bank_is_current`); this last refresh cannot change training.
    """
    if not config.negative_bank:
        return False
    if step == config.steps:
        return validating
    every = config.bank_refresh_every
    return every > 0 and step % every == 0


def _start_bank(model: NaicsModel, init_from: Path | None) -> float:
    """The bank at step 0 of a fresh stage: the one ``init_from``'s stage saved at these very
    weights when it matches (:meth:`NaicsModel.load_bank`), else a refresh. Seconds taken."""
    if init_from is not None:
        started = time.perf_counter()
        path = StageFolder.of(init_from).bank
        if model.load_bank(path):
            log.info("negative bank loaded from %s (same weights and codes)", path)
            return time.perf_counter() - started
    return _refresh_bank(model)


def _refresh_bank(model: NaicsModel) -> float:
    """Rebuild the model's negative bank; returns the seconds it took."""
    t0 = time.perf_counter()
    model.refresh_bank()
    seconds = time.perf_counter() - t0
    log.info("negative bank refreshed in %.1fs", seconds)
    return seconds


def _run_validation(
    model: NaicsModel, validate: Callable[[NaicsModel], dict[str, float]]
) -> dict[str, float]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            result = validate(model)
    finally:
        model.train(was_training)
    return {k: float(v) for k, v in result.items()}


def _accumulate(window: dict[str, list[float]], values: dict[str, float]) -> None:
    for key, value in values.items():
        window.setdefault(key, []).append(value)


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
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


def _open(source: BatchSource, start: int) -> Iterator[Any]:
    return iter(source(start) if callable(source) else source)


def _next(iterator: Iterator[Any], name: str, step: int) -> Any:
    try:
        return next(iterator)
    except StopIteration:
        raise ValueError(
            f"the {name} stream ended at step {step}; samplers must yield at least "
            "TrainConfig.steps batches"
        ) from None


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
