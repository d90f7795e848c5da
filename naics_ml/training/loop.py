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
factories ``start_step -> iterable`` that return the stream from batch ``start_step`` on (the
runner's samplers draw and drop the batches before it: ``naics_ml.training.runner.continued``).
What a resume then guarantees, in one process: it trains on the very batches, dropout noise
and hierarchy pairs of an uninterrupted run, and with one thread ends with its weights bit for
bit (a test) when ``checkpoint_every`` is a multiple of ``bank_refresh_every`` (the bank it
rebuilds at the checkpoint's step is the one the uninterrupted run refreshed there). Only the
first stage trained in a fresh process rounds differently (docs/training.md, "Determinism").
Under torchrun the streams continue alike, but ranks other
than 0 draw new dropout noise, so a resumed data-parallel run is close to, not identical with,
an uninterrupted one.

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
from torch import Tensor
from tqdm.auto import tqdm

from naics_ml.io import atomic_write_text
from naics_ml.stage_folder import StageFolder
from naics_ml.training.bank import load_bank, refresh_bank, save_bank
from naics_ml.training.checkpoint import (
    save_stage_bundle,
)
from naics_ml.training.config import TrainConfig
from naics_ml.training.objective import StageObjective, StepLoss
from naics_ml.training.ranks import place_model, sync_gradients
from naics_ml.training.resume import RunState, save_run_checkpoint, start_or_resume

if TYPE_CHECKING:
    from naics_ml.model.network import NaicsModel

__all__ = [
    "NonFiniteLossError",
    "StageData",
    "StageHooks",
    "StageResult",
    "TrainConfig",
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
    run = start_or_resume(model, config, StageFolder(Path(out_dir)), init_from, extra or {})
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
                save_run_checkpoint(run)
    finally:
        bar.close()
    # -- finish: the bank for the next stage, the summary -------------------------------------
    return _finish(run)


def _optimizer_step(
    run: RunState, objective: StageObjective, batch: Any, query_ids: np.ndarray | None
) -> tuple[StepLoss, Tensor, float]:
    """Loss, backward, all-reduce, clip, AdamW step (or a counted skip), schedule step."""
    run.optimizer.zero_grad(set_to_none=True)
    loss = objective(run.model, batch, query_ids, run.step, run.rank)
    bad = not bool(torch.isfinite(loss.total))
    if not bad:
        loss.total.backward()
    bad, values = sync_gradients(run.trainable, loss.logged_values(), bad, run.world)
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
    run: RunState, objective: StageObjective, outcome: tuple[StepLoss, Tensor, float]
) -> dict[str, float]:
    """Adds a good step's values to the window; at a log step, the window's means."""
    loss, values, grad_norm = outcome
    if math.isfinite(grad_norm):
        _accumulate(run.window, objective.step_metrics(loss, values, grad_norm))
        if run.step % run.config.log_every == 0:
            objective.manifold.check(loss.points.detach())
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


def _finish(run: RunState) -> StageResult:
    """Save the final bank (when current) and the readable summary; the stage's result."""
    wall = time.perf_counter() - run.started
    if run.rank == 0 and run.config.negative_bank and run.step == run.config.steps:
        save_bank(run.model, run.folder.bank)  # only a current one (the last step validated)
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


def _report(
    run: RunState,
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


def _progress_bar(run: RunState, progress: bool) -> Any:
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
    bank (:func:`naics_ml.training.bank.bank_is_current`); this last refresh cannot change
    training.
    """
    if not config.negative_bank:
        return False
    if step == config.steps:
        return validating
    every = config.bank_refresh_every
    return every > 0 and step % every == 0


def _start_bank(model: NaicsModel, init_from: Path | None) -> float:
    """The bank at step 0 of a fresh stage: the one ``init_from``'s stage saved at these very
    weights when it matches (:func:`naics_ml.training.bank.load_bank`), else a refresh.
    Seconds taken."""
    if init_from is not None:
        started = time.perf_counter()
        path = StageFolder.of(init_from).bank
        if load_bank(model, path):
            log.info("negative bank loaded from %s (same weights and codes)", path)
            return time.perf_counter() - started
    return _refresh_bank(model)


def _refresh_bank(model: NaicsModel) -> float:
    """Rebuild the model's negative bank; returns the seconds it took."""
    t0 = time.perf_counter()
    refresh_bank(model)
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
