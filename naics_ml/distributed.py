"""Run one training stage from files, in one process or data-parallel under torchrun (gloo, CPU).

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m naics_ml.distributed \\
        --codes storage/artifacts/2022/naics_codes.parquet \\
        --queries storage/artifacts/2022/naics_index_entries.parquet \\
        --triplets storage/artifacts/2022/triplets --curriculum 01_easy \\
        --out storage/artifacts/2022/models/01_easy [--init-from .../models/00_prev] \\
        [--model-config model.json] [--train-config train.json]

Without torchrun (``python -m naics_ml.distributed ...``) it is a plain single-process run.
``--model-config``/``--train-config`` take a JSON file or inline JSON with the fields of
``ModelConfig``/``TrainConfig`` (missing fields keep their defaults).

Data parallelism (see :func:`naics_ml.train.train_stage`): every rank builds the same model,
draws its own (anchor, positive) pairs and query batches (the samplers split them by rank),
gradients are averaged with one all-reduce per step, and rank 0 writes the checkpoint. The
per-rank batch is ``TrainConfig.batch_size``, so the global batch is ``world_size`` times that.
Run as a command, each rank prints one JSON line at the end with its weights' fingerprint (the
library call prints nothing); the run fails if the replicas' weights differ.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.distributed as dist

from naics_ml.classify import code_channel_texts
from naics_ml.codes import six_digit_mask
from naics_ml.curriculum import load_curriculum
from naics_ml.entry_memory import MEMORY_NAME, memory_entries, save_stage_memory
from naics_ml.model.encoder import digest_tensors
from naics_ml.model.network import ModelConfig, NaicsModel
from naics_ml.sampler import QuerySampler, TripletSampler
from naics_ml.train import StageResult, TrainConfig, query_validator, seed_everything, train_stage

__all__ = ["init_distributed", "main", "run_stage", "weights_fingerprint"]

log = logging.getLogger(__name__)


def init_distributed() -> tuple[int, int]:
    """Join the torchrun process group (gloo) when ``WORLD_SIZE`` > 1; returns (rank, world).

    Also splits the CPU cores between the local ranks: oversubscribed intra-op threads make
    every rank many times slower.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return dist.get_rank(), dist.get_world_size()


def weights_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a (trainable) state dict, names and float32 bytes, to compare replicas."""
    digest = hashlib.sha256()
    digest_tensors(digest, {name: t.float() for name, t in sorted(state.items())})
    return digest.hexdigest()


def run_stage(
    codes: pl.DataFrame,
    triplets_dir: Path,
    curriculum: str | Path,
    out_dir: Path,
    model_config: ModelConfig | None = None,
    train_config: TrainConfig | None = None,
    queries: pl.DataFrame | None = None,
    init_from: Path | None = None,
    extra: dict[str, Any] | None = None,
    progress: bool = True,
    on_metrics: Callable[[int, dict[str, float]], None] | None = None,
    prefix_cache_dir: Path | None = None,
) -> StageResult:
    """Build model and samplers from files and train one stage (any world size).

    ``queries`` is the index-entries frame (code, index, text, split): the splits named by
    ``TrainConfig.query_splits`` (``train`` and ``examples`` by default) train the query path,
    the ``validation`` split gives ``val_loss``/``val_top1``/``val_mrr``; ``test`` is never
    read. ``extra`` gets the curriculum and is part of the checkpoint. ``prefix_cache_dir``
    keeps the frozen prefix between stages (:meth:`NaicsModel.prepare`).
    """
    model_config = model_config or ModelConfig()
    train_config = train_config or TrainConfig()
    rank, world = init_distributed()
    spec = load_curriculum(curriculum)
    seed_everything(train_config.seed)  # identical initial weights on every rank
    model = NaicsModel(model_config)
    codes = codes.sort("index")
    train_q = _split(queries, *train_config.query_splits)
    val_q = _split(queries, "validation")
    model.prepare(
        code_channel_texts(codes),
        queries=train_q["text"].to_list() + val_q["text"].to_list(),
        cache_dir=prefix_cache_dir,
    )
    train_codes = train_q["index"].to_numpy().astype(np.int64)
    query_codes = np.concatenate([train_codes, val_q["index"].to_numpy().astype(np.int64)])
    level = codes["level"].to_numpy()

    def triplets(start: int) -> TripletSampler:
        return TripletSampler(
            Path(triplets_dir),
            level,
            spec,
            train_config.batch_size,
            seed=train_config.seed + start,
            rank=rank,
            world_size=world,
        )

    def query_batches(start: int) -> QuerySampler:
        return QuerySampler(
            train_codes,
            train_config.query_batch_size,
            seed=train_config.seed + start,
            rank=rank,
            world_size=world,
        )

    validate = None
    if val_q.height:
        six = codes["index"].to_numpy()[six_digit_mask(codes)]  # codes sorted by index
        val_ids = np.arange(train_q.height, train_q.height + val_q.height)
        validate = query_validator(val_ids, query_codes[val_ids], six, train_config.temperature)
    use_queries = train_q.height > 0 and train_config.query_batch_size > 0
    result = train_stage(
        model,
        triplets,
        query_batches if use_queries else None,
        train_config,
        Path(out_dir),
        init_from=init_from,
        validate=validate,
        on_metrics=on_metrics,
        progress=progress,
        query_codes=query_codes if use_queries else None,
        codes=codes,
        extra={"curriculum": spec.to_dict(), **(extra or {})},
    )
    _check_replicas(model, world)
    if rank == 0:  # the entries the query path learned from, for the Classifier's memory
        if queries is not None:
            save_stage_memory(out_dir, memory_entries(queries, train_config.query_splits))
        else:
            (Path(out_dir) / MEMORY_NAME).unlink(missing_ok=True)  # never a stale memory
    return dataclasses.replace(result, model=model)


def _print_summary(result: StageResult) -> None:
    """One JSON line per rank (as a command only): steps, checkpoint, weights' fingerprint."""
    print(
        json.dumps(
            {
                "rank": int(os.environ.get("RANK", "0")),
                "world_size": int(os.environ.get("WORLD_SIZE", "1")),
                "steps": result.steps,
                "skipped_steps": result.skipped_steps,
                "checkpoint": str(result.checkpoint),
                "weights_sha256": weights_fingerprint(result.model.trainable_state_dict()),
                "wall_time_s": round(result.wall_time_s, 3),
            }
        ),
        flush=True,
    )


def _split(queries: pl.DataFrame | None, *splits: str) -> pl.DataFrame:
    empty = pl.DataFrame(schema={"index": pl.Int32, "text": pl.String})
    if queries is None:
        return empty
    return queries.filter(pl.col("split").is_in(list(splits))).select("index", "text")


def _check_replicas(model: NaicsModel, world: int) -> None:
    if world <= 1:
        return
    prints: list[str | None] = [None] * world
    dist.all_gather_object(prints, weights_fingerprint(model.trainable_state_dict()))
    if len(set(prints)) != 1:
        raise RuntimeError(f"data-parallel replicas diverged: weight fingerprints {prints}")


def _json_arg(value: str | None) -> dict[str, Any]:
    if not value:
        return {}
    path = Path(value)
    text = path.read_text() if path.is_file() else value
    return json.loads(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m naics_ml.distributed", description=__doc__)
    parser.add_argument("--codes", type=Path, required=True, help="code table parquet")
    parser.add_argument("--queries", type=Path, help="index entries parquet (train/validation)")
    parser.add_argument("--triplets", type=Path, required=True, help="triplet shard folder")
    parser.add_argument("--curriculum", required=True, help="packaged name or YAML path")
    parser.add_argument("--out", type=Path, required=True, help="stage folder")
    parser.add_argument("--init-from", type=Path, help="previous stage folder or checkpoint")
    parser.add_argument("--model-config", help="ModelConfig fields: JSON file or inline JSON")
    parser.add_argument("--train-config", help="TrainConfig fields: JSON file or inline JSON")
    parser.add_argument("--prefix-cache", type=Path, help="folder keeping the frozen prefix")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s rank{rank} %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        result = run_stage(
            pl.read_parquet(args.codes),
            args.triplets,
            args.curriculum,
            args.out,
            model_config=ModelConfig.from_dict(_json_arg(args.model_config)),
            train_config=TrainConfig.from_dict(_json_arg(args.train_config)),
            queries=pl.read_parquet(args.queries) if args.queries else None,
            init_from=args.init_from,
            progress=not args.no_progress,
            prefix_cache_dir=args.prefix_cache,
        )
        _print_summary(result)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
