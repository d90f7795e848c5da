"""One training loop for one curriculum stage: seeded, checkpointed, resumable, NaN-guarded.

The loop, per step:

1. take a triplet batch (anchor, positive, k negatives) and, optionally, a batch of train-split
   index queries;
2. encode every code once (``model.encode_codes``; only the step's distinct codes when neither
   the hierarchy loss nor ``query_candidates="all"`` needs them all) and the queries;
3. loss = hyperbolic InfoNCE over the triplets
         + ``query_loss_weight`` * query InfoNCE (query -> its code among all six-digit codes,
           or among the step's codes with ``query_candidates="step"``; only six-digit ones when
           the code table is given, so a query is never pushed away from its own parent)
         + ``hierarchy_loss_weight`` * normalised stress between the Lorentz distances of
           ``hierarchy_pairs`` stratified code pairs and ``hierarchy_scale`` * their tree
           distances (:mod:`naics_ml.tree_pairs`; pairs drawn from ``(seed, step, rank)``)
         + ``model.config.balance_weight`` * load-balance loss of the expert gate;
4. a non-finite loss or gradient skips the step (no optimizer update; the step counter and the
   schedule still advance) and is counted; ``max_consecutive_bad_steps`` in a row or
   ``max_bad_steps`` in total raise :class:`NonFiniteLossError`;
5. clip gradients, AdamW step, cosine schedule with linear warm-up;
6. metrics to ``on_metrics`` every ``log_every`` steps (means over the window), validation every
   ``validation_every`` steps, an atomic checkpoint every ``checkpoint_every`` steps.

Negative memory bank (``TrainConfig.negative_bank``, on by default; a speed approximation):
a step names ~500 distinct codes (all 2,125 with the hierarchy loss), but only the anchors (~30;
the positives too with ``bank_live_positives``, the query batch's true codes with
``bank_live_query_codes``) are encoded live through the LoRA layers; the other codes' four
pooled channel vectors come from ``model``'s bank
(:meth:`NaicsModel.refresh_bank`, recomputed for every code at the start of the call, also
after a resume, and every ``bank_refresh_every`` steps; a live code's row is also overwritten
each time it is encoded). What is approximated, exactly:

* the negatives' gradient does not flow into the LoRA adapters (it does flow into the fusion:
  the fusion/MoE and the exponential map run with gradients on every code of the step, so the
  fusion gradients are exact given the channel vectors);
* a negative's channel vectors are at most ``bank_refresh_every`` steps stale (computed with
  adapters up to that many updates old), so its point is slightly off the current model's.

The anchors', positives' and queries' encodings are exact; by default the queries' true codes
come from the bank (MoCo-style keys: the query loss trains the query path and the fusion, the
code adapters learn from the triplets). ``bank_live_query_codes=True`` encodes them live too,
``bank_live_positives=True`` the positives. Measured on the real data (batch 32, k 16, 32
queries, 2 cores) before the all-code losses, a step took ~1.2 s with live positives, ~2.3 s
with live query codes too, ~0.35 s with only the anchors live, ~8 s exact; the fusion over all
codes adds ~0.25 s (~0.15 s since the experts run only on their routed rows).
``negative_bank=False`` computes the exact loss and gradients (every code of the step live,
~3.5x slower on CPU).

Validation and the final evaluation never see a stale bank: a refresh due at a validated step
runs before the validation, the last step is refreshed when it is validated, and the exact path
of ``encode_codes`` reads the bank only while no weight changed since its refresh (the same
numbers, ~11 s less per validation on 2 cores). Resuming is bit-identical to an uninterrupted
run when ``checkpoint_every`` is a multiple of ``bank_refresh_every`` (a checkpoint holds no bank;
the resumed run rebuilds it at a step where the uninterrupted run rebuilt it too); otherwise
the bank at the resume step is fresher than it would have been. A finished stage saves its
current bank (``bank.pt``, keyed by a hash of the weights, the model config and the code
texts); the next stage, started ``init_from`` it, loads that file instead of refreshing at
step 0: the same rows, one refresh (15 to 28 s on 2 cores) less per stage. Data parallel:
every rank keeps its own bank (the refreshes agree, the live-row updates differ per rank;
weights stay identical).

Resume policy (what re-materialising a stage does):

* ``out_dir/checkpoint.pt`` is *incomplete* and its identity (model config, train config,
  ``extra``) equals this call's: continue from its step with its weights, optimizer, scheduler and
  RNG state. ``init_from`` is ignored then (the checkpoint already descends from it).
* anything else (no checkpoint, a different identity, or a *complete* one): train from scratch,
  starting from ``init_from``'s weights if given. A finished stage is retrained on purpose: a new
  materialisation is a request for a new run (upstream data may have changed under the same
  config); callers who want to reuse a finished stage can check
  :func:`naics_ml.checkpoint.is_complete` first.

Data streams are passed in, so that the loop knows nothing about shards or curricula. Pass a
factory ``start_step -> iterable`` instead of an iterable to control what a resumed run sees:
it is called with the step the run starts from. A sampler seeded with ``seed + start_step``
gives a deterministic continuation (no fast-forward through the stream); a stream whose batch
``s`` depends only on ``(seed, s)`` makes a resumed run bit-identical to an uninterrupted one.

Data parallel: when ``torch.distributed`` is initialised with world size > 1 (torchrun, gloo on
CPU), every rank draws its own batches, gradients of the trainable parameters are averaged with
one all-reduce per step (packed with the loss values and the "bad step" flag, so all ranks skip
the same steps), the weights are broadcast from rank 0 at start, and only rank 0 writes files,
logs and calls ``on_metrics``. ``validate`` runs on every rank (the model's balance loss performs
a collective inside ``encode_*``), only rank 0's result is reported. See
:mod:`naics_ml.distributed`.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import polars as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from naics_ml.checkpoint import (
    BANK_NAME,
    CHECKPOINT_NAME,
    SUMMARY_NAME,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    save_stage_bundle,
    stage_folder,
)
from naics_ml.codes import six_digit_mask
from naics_ml.io import atomic_write_text
from naics_ml.model.lorentz import check_on_manifold, distance, pairwise_distance, radius
from naics_ml.model.loss import distortion_loss, hyperbolic_info_nce
from naics_ml.train_config import TrainConfig
from naics_ml.tree_pairs import TreePairs

if TYPE_CHECKING:
    from naics_ml.model.network import NaicsModel

__all__ = [
    "NonFiniteLossError",
    "StageResult",
    "TrainConfig",
    "lr_factor",
    "query_validator",
    "seed_everything",
    "train_stage",
]

log = logging.getLogger(__name__)


class TripletBatchLike(Protocol):
    """What the loop needs of a triplet batch (``naics_ml.sampler.TripletBatch``)."""

    anchor: np.ndarray  # (B,) code indices
    positive: np.ndarray  # (B,)
    negatives: np.ndarray  # (B, k); entries < 0 are padding and are masked


BatchSource = Iterable[Any] | Callable[[int], Iterable[Any]]


@dataclass(frozen=True)
class StageResult:
    """What a stage produced: the checkpoint (``out_dir/checkpoint.pt``) and its numbers."""

    checkpoint: Path
    steps: int
    skipped_steps: int
    metrics: dict[str, float] = field(default_factory=dict)  # last logged + validation values
    wall_time_s: float = 0.0  # this call only
    resumed_from: int = 0  # step the run continued from (0 = fresh start)
    # the trained, prepared model, when the caller handed it out (run_stage does), so that an
    # evaluation right after training need not rebuild and re-prepare it from the checkpoint
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
    """Seed python, numpy (global) and torch. Call before building the model for reproducible
    initial weights."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier of the base learning rate at 0-based ``step``: linear warm-up, then cosine."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------
def train_stage(
    model: NaicsModel,
    triplets: BatchSource,
    queries: BatchSource | None,
    config: TrainConfig,
    out_dir: Path,
    init_from: Path | None = None,
    validate: Callable[[NaicsModel], dict[str, float]] | None = None,
    on_metrics: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
    *,
    query_codes: np.ndarray | None = None,
    codes: pl.DataFrame | None = None,
    extra: dict[str, Any] | None = None,
) -> StageResult:
    """Train ``model``'s trainable parameters for ``config.steps`` steps; see the module doc.

    ``model`` must be prepared (``model.prepare``) for all codes and, with ``queries``, for the
    query texts; ``queries`` yields arrays of prepared-query ids and ``query_codes[i]`` is the
    code index of prepared query ``i``. ``codes`` (the code table), when given, is saved as
    ``out_dir/codes.parquet`` (what :class:`naics_ml.classify.Classifier` needs) and restricts
    query negatives to six-digit codes (without it, every code of the step is a candidate).
    ``extra`` (JSON-like) is stored in the checkpoint and is part of the resume identity.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    rank, world = _rank_world()
    extra = dict(extra or {})
    if queries is not None and query_codes is None:
        raise ValueError("queries need query_codes (the code index of every prepared query)")
    device = next(model.parameters()).device
    curvature = float(model.config.curvature)
    balance_weight = float(model.config.balance_weight)
    identity = _json_normal(
        {"model_config": model.config.to_dict(), "train_config": config.to_dict(), "extra": extra}
    )

    params = _named_trainable(model)
    optimizer = _make_optimizer(params, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s, config.warmup_steps, config.steps, config.min_lr_ratio),
    )

    # -- start: resume, or fresh (optionally from init_from) ---------------------------------
    ckpt_file = out_dir / CHECKPOINT_NAME
    resume = _resumable(ckpt_file, identity)
    if resume is not None:
        model.load_trainable_state_dict(resume["model_state"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        start, skipped = int(resume["step"]), int(resume["skipped_steps"])
        train_seconds = float(resume.get("train_seconds", 0.0))
        resume_metrics = dict(resume.get("metrics", {}))
        restore_rng_state(resume["rng"])
        if world > 1:  # the saved state is rank 0's; give the other ranks their own streams
            torch.manual_seed(config.seed + 1_000_003 * rank + start)
        log.info("resuming %s from step %d (%d skipped so far)", out_dir, start, skipped)
    else:
        if init_from is not None:
            model.load_trainable_state_dict(load_checkpoint(init_from)["model_state"])
            log.info("initialised trainable weights from %s", init_from)
        start, skipped, train_seconds = 0, 0, 0.0
        resume_metrics = {}
        seed_everything(config.seed + 1_000_003 * rank)
        if rank == 0:
            for stale in (SUMMARY_NAME, BANK_NAME):  # an older run's, not these weights'
                (out_dir / stale).unlink(missing_ok=True)
    bank_from = init_from if resume is None else None  # a resumed stage's weights moved on
    del resume
    if rank == 0 and codes is not None:
        save_stage_bundle(out_dir, codes)
    candidate_ok = _six_digit_mask(codes, device)
    tree_pairs = None
    if config.hierarchy_loss_weight > 0:
        if codes is None:
            raise ValueError(
                "TrainConfig.hierarchy_loss_weight > 0 needs the code table (codes=...)"
            )
        tree_pairs = TreePairs.from_codes(codes)
    every_code = (
        model.num_codes
        if tree_pairs is not None or (query_codes is not None and config.query_candidates == "all")
        else None
    )
    q_codes = None if query_codes is None else torch.as_tensor(query_codes, dtype=torch.long)
    if world > 1:
        for tensor in [p for _, p in params]:
            dist.broadcast(tensor.data, src=0)
        dist.barrier()

    triplet_iter = _open(triplets, start)
    query_iter = _open(queries, start) if queries is not None else None
    trainable = [p for _, p in params]
    window: dict[str, list[float]] = {}
    last_metrics: dict[str, float] = dict(resume_metrics)
    consecutive = 0
    bar = tqdm(
        total=config.steps,
        initial=start,
        desc=out_dir.name or "train",
        file=sys.stderr,
        disable=not progress or rank != 0,
        dynamic_ncols=True,
        mininterval=1.0,
    )
    bank_refresh_s = math.nan
    if config.negative_bank:
        bank_refresh_s = _start_bank(model, bank_from)
    clock, clock_step = time.perf_counter(), start
    model.train()
    step = start
    try:
        while step < config.steps:
            batch = _next(triplet_iter, "triplets", step)
            query_ids = _next(query_iter, "queries", step) if query_iter is not None else None
            pairs = None
            if tree_pairs is not None:  # a function of (seed, step, rank): resumes exactly
                rng = np.random.default_rng([config.seed, step, rank, 0x7EE])
                pairs = _pair_batch(tree_pairs, rng, config, device)
            optimizer.zero_grad(set_to_none=True)
            loss, parts, points = _compute_loss(
                model,
                batch,
                query_ids,
                q_codes,
                candidate_ok,
                config,
                curvature,
                device,
                use_bank=config.negative_bank,
                live_positives=config.bank_live_positives,
                live_query_codes=config.bank_live_query_codes,
                every_code=every_code,
                pairs=pairs,
            )
            loss = loss + balance_weight * parts["balance"]
            bad = not bool(torch.isfinite(loss))
            if not bad:
                loss.backward()
            values = torch.stack(
                [
                    loss.detach(),
                    parts["triplet"].detach(),
                    parts["query"].detach(),
                    parts["balance"].detach(),
                    parts["hierarchy"].detach(),
                ]
            ).double()
            bad_any, values = _sync_gradients(trainable, values, bad, world)
            reason = "loss"
            grad_norm = math.nan
            if not bad_any:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip))
                if not math.isfinite(grad_norm):
                    bad_any, reason = True, "gradient"
            step += 1
            if bad_any:
                optimizer.zero_grad(set_to_none=True)
                consecutive += 1
                skipped += 1
                log.warning(
                    "step %d: non-finite %s, step skipped (%d total)", step, reason, skipped
                )
                if (
                    consecutive >= config.max_consecutive_bad_steps
                    or skipped >= config.max_bad_steps
                ):
                    raise NonFiniteLossError(step, consecutive, skipped, reason)
            else:
                consecutive = 0
                optimizer.step()
            step_lr = float(optimizer.param_groups[0]["lr"])  # the lr this step used
            step_fusion_lr = float(optimizer.param_groups[-1]["lr"])
            with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()"
                warnings.simplefilter("ignore", UserWarning)
                scheduler.step()

            # -- metrics, validation, checkpoint -------------------------------------------
            bar.update(1)
            if not bad_any:
                _accumulate(window, _step_metrics(values, parts, points, grad_norm, curvature))
                if step % config.log_every == 0:
                    check_on_manifold(points.detach(), curvature)
            metrics = {}
            if step % config.log_every == 0 or step == config.steps:
                metrics = {k: float(np.mean(v)) for k, v in window.items()}
                window.clear()
                metrics["lr"] = step_lr
                metrics["fusion_lr"] = step_fusion_lr
                metrics["skipped_steps"] = float(skipped)
                if config.negative_bank:
                    metrics["bank_refresh_s"] = bank_refresh_s
                metrics["steps_per_s"] = (step - clock_step) / max(
                    time.perf_counter() - clock, 1e-9
                )
                clock, clock_step = time.perf_counter(), step
            validating = validate is not None and (
                step % config.validation_every == 0 or step == config.steps
            )
            if _refresh_due(config, step, validating):  # before validation, which then reads it
                bank_refresh_s = _refresh_bank(model)
            if validating:  # on every rank: the model's balance loss runs a collective
                metrics.update(_run_validation(model, validate))
            if metrics and rank == 0:
                _report(step, config.steps, metrics, bar, on_metrics)
            last_metrics.update(metrics)
            if step % config.checkpoint_every == 0 or step == config.steps:
                elapsed = train_seconds + time.perf_counter() - started
                _save(
                    out_dir,
                    model,
                    optimizer,
                    scheduler,
                    step,
                    skipped,
                    identity,
                    extra,
                    complete=step == config.steps,
                    train_seconds=elapsed,
                    metrics=last_metrics,
                    rank=rank,
                    world=world,
                )
    finally:
        bar.close()
    wall = time.perf_counter() - started
    final_metrics = dict(last_metrics)
    if rank == 0 and config.negative_bank and step == config.steps:
        model.save_bank(out_dir / BANK_NAME)  # only a current one (the last step validated)
    if rank == 0:
        summary = {
            "checkpoint": str(ckpt_file),
            "steps": step,
            "skipped_steps": skipped,
            "resumed_from": start,
            "wall_time_s": wall,
            "train_seconds": train_seconds + wall,
            "metrics": final_metrics,
            **identity,
        }
        atomic_write_text(out_dir / SUMMARY_NAME, json.dumps(summary, indent=2, default=str))
    return StageResult(ckpt_file, step, skipped, final_metrics, wall, start)


# ---------------------------------------------------------------------------------------------
# pieces of a step
# ---------------------------------------------------------------------------------------------
def _compute_loss(
    model: NaicsModel,
    batch: TripletBatchLike,
    query_ids: np.ndarray | None,
    query_codes: Tensor | None,
    candidate_ok: Tensor | None,
    config: TrainConfig,
    curvature: float,
    device: torch.device,
    use_bank: bool = False,
    live_positives: bool = True,
    live_query_codes: bool = True,
    every_code: int | None = None,
    pairs: tuple[Tensor, Tensor, Tensor] | None = None,
) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """Triplet (+ query, + hierarchy) loss of one batch; every distinct code is encoded once.

    ``use_bank``: only anchors, positives and the queries' codes (the latter two unless
    switched off by ``live_*``) are encoded live, the other codes come from the model's bank
    (see the module doc). ``every_code`` (the number of codes) encodes all codes, not only the
    step's: the query softmax then runs over every six-digit code (``query_candidates="all"``)
    and ``pairs`` (i, j, tree distance) add the hierarchy distortion loss.
    """
    anchor = torch.tensor(np.asarray(batch.anchor), dtype=torch.long)
    positive = torch.tensor(np.asarray(batch.positive), dtype=torch.long)
    negatives = torch.tensor(np.asarray(batch.negatives), dtype=torch.long)
    b, k = negatives.shape
    negative_mask = negatives >= 0
    negatives = torch.where(negative_mask, negatives, anchor[:, None].expand(b, k))
    ids = [anchor, positive, negatives.reshape(-1)]
    q_positive = None
    if query_ids is not None and len(query_ids) > 0:
        q_ids = torch.tensor(np.asarray(query_ids), dtype=torch.long)
        q_positive = query_codes[q_ids]
        ids.append(q_positive)
    if every_code is not None:  # all codes: inverse is the identity on code indices
        unique = torch.arange(every_code)
        inverse = torch.cat(ids)
    else:
        unique, inverse = torch.unique(torch.cat(ids), return_inverse=True)
    live = None
    if use_bank:
        live_ids = [anchor]
        live_ids += [positive] if live_positives else []
        live_ids += ids[3:] if live_query_codes else []
        live = torch.cat(live_ids).to(device)
    encoded = model.encode_codes(unique.to(device), live=live)
    points = encoded.points
    a = points[inverse[:b]]
    p = points[inverse[b : 2 * b]]
    n = points[inverse[2 * b : 2 * b + b * k]].view(b, k, -1)
    mask = None if bool(negative_mask.all()) else negative_mask.to(device)
    triplet = hyperbolic_info_nce(a, p, n, curvature, config.temperature, mask)
    parts: dict[str, Tensor] = {"triplet": triplet, "utilization": encoded.expert_utilization}
    balance = encoded.balance_loss
    if q_positive is not None:
        q_enc = model.encode_queries(q_ids.to(device))
        # candidates: the step's distinct codes (six-digit only when the code table is known)
        keep = torch.ones(len(unique), dtype=torch.bool, device=device)
        if candidate_ok is not None:
            keep = candidate_ok[unique.to(device)]
        target_pos = inverse[2 * b + b * k :].to(device)
        keep[target_pos] = True
        cand_index = torch.nonzero(keep).squeeze(1)
        remap = torch.full((len(unique),), -1, dtype=torch.long, device=device)
        remap[cand_index] = torch.arange(len(cand_index), device=device)
        logits = -pairwise_distance(q_enc.points, points[cand_index], curvature)
        query = F.cross_entropy(logits / config.temperature, remap[target_pos])
        balance = 0.5 * (balance + q_enc.balance_loss)
        parts["utilization"] = 0.5 * (parts["utilization"] + q_enc.expert_utilization)
        total = triplet + config.query_loss_weight * query
    else:
        query = torch.zeros((), device=device)
        total = triplet
    hierarchy = torch.zeros((), device=device)
    if pairs is not None:
        i, j, target = pairs
        hierarchy = distortion_loss(distance(points[i], points[j], curvature), target)
        total = total + config.hierarchy_loss_weight * hierarchy
    parts["query"] = query
    parts["hierarchy"] = hierarchy
    parts["balance"] = balance
    parts["triplet_accuracy"] = _triplet_accuracy(a, p, n, mask, curvature)
    return total, parts, points


@torch.no_grad()
def _triplet_accuracy(
    a: Tensor, p: Tensor, n: Tensor, mask: Tensor | None, curvature: float
) -> Tensor:
    """Share of anchors whose positive is nearer than every (unmasked) negative."""
    d_pos = distance(a, p, curvature)
    d_neg = distance(a[:, None, :], n, curvature)
    if mask is not None:
        d_neg = d_neg.masked_fill(~mask, math.inf)
    return (d_pos[:, None] < d_neg).all(dim=1).float().mean()


def _step_metrics(
    values: Tensor, parts: dict[str, Tensor], points: Tensor, grad_norm: float, curvature: float
) -> dict[str, float]:
    loss, triplet, query, balance, hierarchy = (float(v) for v in values)
    out = {
        "loss": loss,
        "triplet_loss": triplet,
        "query_loss": query,
        "balance_loss": balance,
        "hierarchy_loss": hierarchy,
        "grad_norm": grad_norm,
        "triplet_accuracy": float(parts["triplet_accuracy"]),
    }
    for i, share in enumerate(parts["utilization"].detach().flatten().tolist()):
        out[f"expert_utilization_{i}"] = float(share)
    with torch.no_grad():
        r = radius(points.detach(), curvature)
    out["radius_mean"] = float(r.mean())
    out["radius_max"] = float(r.max())
    return out


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
    step: int,
    total: int,
    metrics: dict[str, float],
    bar: Any,
    on_metrics: Callable[[int, dict[str, float]], None] | None,
) -> None:
    """Progress line, progress-bar postfix and the caller's metrics callback (rank 0)."""
    if "lr" in metrics:
        rate = metrics["steps_per_s"]
        log.info(
            "step %d/%d loss %.4f lr %.2e %.2f steps/s eta %.0fs",
            step,
            total,
            metrics.get("loss", math.nan),
            metrics["lr"],
            rate,
            (total - step) / max(rate, 1e-9),
        )
        bar.set_postfix(loss=f"{metrics.get('loss', math.nan):.4f}", lr=f"{metrics['lr']:.2e}")
    if on_metrics is not None:
        on_metrics(step, dict(metrics))


def _refresh_due(config: TrainConfig, step: int, validating: bool) -> bool:
    """Whether the bank is rebuilt after ``step``'s update.

    Every ``bank_refresh_every`` steps (the next steps' negatives), and after the last step when
    it is validated: validation and the final evaluation that follows then read every code from
    the fresh bank (:meth:`NaicsModel.bank_is_current`) instead of encoding them again; this
    last refresh cannot change training.
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
        path = stage_folder(init_from) / BANK_NAME
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


# ---------------------------------------------------------------------------------------------
# setup helpers
# ---------------------------------------------------------------------------------------------
def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _named_trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    return params


def _make_optimizer(
    params: list[tuple[str, torch.nn.Parameter]], config: TrainConfig
) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (biases and norm scales are not shrunk); the fusion
    (new weights) gets ``fusion_learning_rate``, the LoRA adapters ``learning_rate``."""
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


def _pair_batch(
    tree_pairs: TreePairs, rng: np.random.Generator, config: TrainConfig, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """One step's hierarchy pairs: (i, j, scale * tree distance) tensors on ``device``."""
    i, j = tree_pairs.sample(rng, config.hierarchy_pairs)
    target = tree_pairs.tree_distance[i, j] * config.hierarchy_scale
    return (
        torch.as_tensor(i, device=device),
        torch.as_tensor(j, device=device),
        torch.as_tensor(target, dtype=torch.float32, device=device),
    )


def _six_digit_mask(codes: pl.DataFrame | None, device: torch.device) -> Tensor | None:
    if codes is None:
        return None
    frame = codes.sort("index")
    if frame["index"].to_list() != list(range(frame.height)):
        raise ValueError("the code table's index column must be 0..n-1")
    return torch.as_tensor(six_digit_mask(frame), device=device)


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


def _json_normal(value: Any) -> Any:
    """Tuples -> lists etc., so identities compare equal after a round trip through a file."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


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
    if found != identity:
        log.warning("%s was written with another configuration; starting over", ckpt_file)
        return None
    return state


def _save(
    out_dir: Path,
    model: NaicsModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    skipped: int,
    identity: dict[str, Any],
    extra: dict[str, Any],
    *,
    complete: bool,
    train_seconds: float,
    metrics: dict[str, float],
    rank: int,
    world: int,
) -> None:
    if rank == 0:
        state = {
            "model_config": model.config.to_dict(),
            "train_config": identity["train_config"],
            "model_state": {k: v.detach().cpu() for k, v in model.trainable_state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "skipped_steps": skipped,
            "rng": capture_rng_state(),
            "complete": complete,
            "extra": extra,
            "metrics": dict(metrics),
            "train_seconds": train_seconds,
            "world_size": world,
        }
        save_checkpoint(state, out_dir / CHECKPOINT_NAME)
    if world > 1:
        dist.barrier()


# ---------------------------------------------------------------------------------------------
# validation helper
# ---------------------------------------------------------------------------------------------
def query_validator(
    query_ids: np.ndarray,
    query_codes: np.ndarray,
    candidate_codes: np.ndarray,
    temperature: float,
    batch_size: int = 256,
    prefix: str = "val_",
) -> Callable[[NaicsModel], dict[str, float]]:
    """A ``validate`` callback: held-out queries (already prepared in the model) against
    ``candidate_codes`` (e.g. all six-digit code indices).

    Returns ``val_loss`` (cross-entropy of the query softmax over all candidates, the quantity
    the query loss trains), ``val_top1`` and ``val_mrr``. Never pass the test split here.
    """
    q_all = torch.tensor(np.asarray(query_ids), dtype=torch.long)
    cand = torch.tensor(np.asarray(candidate_codes), dtype=torch.long)
    position = {int(c): i for i, c in enumerate(cand.tolist())}
    missing = [int(c) for c in np.asarray(query_codes) if int(c) not in position]
    if missing:
        raise ValueError(f"query codes not among the candidates, e.g. {missing[:5]}")
    target_all = torch.as_tensor([position[int(c)] for c in np.asarray(query_codes)])

    def validate(model: NaicsModel) -> dict[str, float]:
        curvature = float(model.config.curvature)
        device = next(model.parameters()).device
        code_points = torch.cat(
            [
                model.encode_codes(cand[i : i + batch_size].to(device)).points
                for i in range(0, len(cand), batch_size)
            ]
        )
        total, hits, rr = 0.0, 0.0, 0.0
        for i in range(0, len(q_all), batch_size):
            q_points = model.encode_queries(q_all[i : i + batch_size].to(device)).points
            target = target_all[i : i + batch_size].to(device)
            dist_qc = pairwise_distance(q_points, code_points, curvature).double()
            total += float(F.cross_entropy(-dist_qc / temperature, target, reduction="sum"))
            true_d = dist_qc.gather(1, target[:, None])
            rank = (dist_qc < true_d).sum(1) + (dist_qc == true_d).sum(1)  # pessimistic ties
            hits += float((rank == 1).sum())
            rr += float((1.0 / rank.double()).sum())
        n = max(len(q_all), 1)
        return {f"{prefix}loss": total / n, f"{prefix}top1": hits / n, f"{prefix}mrr": rr / n}

    return validate
