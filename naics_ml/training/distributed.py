"""Data-parallel training under torchrun: join the group, train, compare replicas.

    python -m torch.distributed.run --standalone --nproc_per_node 2 \\
        -m naics_ml.training.distributed \\
        --codes storage/artifacts/2022/naics_codes.parquet \\
        --queries storage/artifacts/2022/naics_index_entries.parquet \\
        --triplets storage/artifacts/2022/triplets --stage stage_02_medium \\
        --out storage/artifacts/2022/models/stage_02_medium \\
        --init-from storage/artifacts/2022/models/stage_01_easy \\
        [--model-config model.json] [--train-config train.json]

Without torchrun (``python -m naics_ml.training.distributed ...``) it is a single-process run.
``--stage`` takes a stage's curriculum and settings from the stage table
(``naics_ml.stage_table``), as its Dagster asset does; ``--curriculum`` names another curriculum.
``--model-config``/``--train-config`` take a JSON file or inline JSON with the fields of
``ModelConfig``/``TrainConfig`` (missing fields keep the stage's settings, else the defaults);
``--preset gpu`` starts from the GPU preset's settings (``naics_ml.training.presets``).

One code path for both kinds of machine: the training device (``TrainConfig.device``, resolved
per rank by ``naics_ml.training.loop.rank_device``) picks the process group's backend, NCCL for
CUDA (each rank on cuda:LOCAL_RANK) and gloo for the CPU (:func:`process_group_backend`).

Every rank runs :func:`naics_ml.training.runner.train_from_inputs`; gradients are averaged with
one all-reduce per step and rank 0 writes the training files of the stage folder (checkpoint,
codes, bank, summary; the evaluation's files come from :func:`naics_ml.stage.run_stage`). Each
rank prints one JSON line at the end with its weights' fingerprint; the run fails if the
replicas' weights differ. Importing this module prints nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl
import torch
import torch.distributed as dist

from naics_ml.model.encoder import digest_tensors
from naics_ml.model.network import NaicsModel
from naics_ml.stage_table import STAGE_NAMES, stage_spec
from naics_ml.training.loop import StageHooks, StageResult
from naics_ml.training.presets import PRESETS, get_preset
from naics_ml.training.ranks import rank_device
from naics_ml.training.runner import StageInputs, train_from_inputs

__all__ = ["init_distributed", "main", "process_group_backend", "weights_fingerprint"]

log = logging.getLogger(__name__)


def process_group_backend(device: torch.device) -> str:
    """NCCL for CUDA tensors, gloo for CPU ones; other devices cannot train data-parallel."""
    if device.type == "cuda":
        return "nccl"
    if device.type == "cpu":
        return "gloo"
    raise ValueError(f"data-parallel training runs on CUDA or the CPU, not on {device}")


def init_distributed(device_setting: str = "cpu") -> tuple[int, int]:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1; returns (rank, world).

    The backend follows this rank's training device (:func:`process_group_backend`); a CUDA
    rank makes cuda:LOCAL_RANK its current device, which NCCL's collectives use. Also splits
    the CPU cores between the local ranks: oversubscribed intra-op threads make every rank many
    times slower.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    device = rank_device(device_setting)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(process_group_backend(device))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return dist.get_rank(), dist.get_world_size()


def weights_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a (trainable) state dict, names and float32 bytes, to compare replicas."""
    digest = hashlib.sha256()
    digest_tensors(digest, {name: t.float() for name, t in sorted(state.items())})
    return digest.hexdigest()


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
    parser = argparse.ArgumentParser(
        prog="python -m naics_ml.training.distributed", description=__doc__
    )
    parser.add_argument("--codes", type=Path, required=True, help="code table parquet")
    parser.add_argument("--queries", type=Path, help="index entries parquet (train/validation)")
    parser.add_argument("--triplets", type=Path, required=True, help="triplet shard folder")
    parser.add_argument("--stage", choices=STAGE_NAMES, help="its curriculum and settings")
    parser.add_argument("--curriculum", help="packaged name or YAML path (default: --stage's)")
    parser.add_argument("--out", type=Path, required=True, help="stage folder")
    parser.add_argument("--init-from", type=Path, help="previous stage folder or checkpoint")
    parser.add_argument("--model-config", help="ModelConfig fields: JSON file or inline JSON")
    parser.add_argument("--train-config", help="TrainConfig fields: JSON file or inline JSON")
    parser.add_argument("--prefix-cache", type=Path, help="folder keeping the frozen prefix")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="cpu", help="what the configs start from"
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    spec = stage_spec(args.stage) if args.stage else None
    curriculum = args.curriculum or (spec.curriculum if spec else None)
    if curriculum is None:
        parser.error("give --stage or --curriculum")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s rank{rank} %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    preset = get_preset(args.preset)
    configs = (
        preset.model_config(_json_arg(args.model_config)),
        preset.train_config({**(spec.train if spec else {}), **_json_arg(args.train_config)}),
    )
    try:
        _, world = init_distributed(configs[1].device)
        inputs = StageInputs(
            pl.read_parquet(args.codes),
            args.triplets,
            curriculum,
            pl.read_parquet(args.queries) if args.queries else None,
            args.prefix_cache,
        )
        hooks = StageHooks(progress=not args.no_progress)
        result = train_from_inputs(inputs, args.out, configs, args.init_from, hooks)
        _check_replicas(result.model, world)
        _print_summary(result)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
