"""Train one stage from its inputs: build the model, prepare its texts, open the samplers.

The one entry point for a stage's training, in one process (the Dagster asset, through
:func:`naics_ml.stage.run_stage`) or on every rank of a torchrun job
(:mod:`naics_ml.training.distributed`). Every rank builds the same model, draws its own
(anchor, positive) pairs and query batches (the samplers split them by rank); the per-rank batch
is ``TrainConfig.batch_size``, so the global batch is ``world_size`` times that. The model goes to
the stage's device before it prepares its texts, so the frozen prefix is computed there.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import polars as pl

from naics_ml.data.codes import six_digit_mask
from naics_ml.model.channels import code_channel_texts
from naics_ml.model.config import ModelConfig
from naics_ml.model.network import NaicsModel
from naics_ml.training.config import TrainConfig
from naics_ml.training.loop import StageData, StageHooks, StageResult, train_stage
from naics_ml.training.ranks import place_model, rank_world
from naics_ml.training.resume import seed_everything
from naics_ml.training.validation import query_validator
from naics_ml.triplets.curriculum import load_curriculum
from naics_ml.triplets.query_sampler import QuerySampler
from naics_ml.triplets.sampler import TripletBatch, TripletSampler

T = TypeVar("T")

__all__ = ["StageInputs", "train_from_inputs"]


@dataclass(frozen=True)
class StageInputs:
    """What a stage trains on. ``queries`` is the index-entries frame (code, index, text, split)
    plus any extra training queries: the kinds named by ``TrainConfig.query_splits`` train the
    query path, ``validation`` gives ``val_loss``/``val_top1``/``val_mrr``; ``test`` is never
    read. ``prefix_cache_dir`` keeps the frozen prefix between stages."""

    codes: pl.DataFrame
    triplets_dir: Path
    curriculum: str | Path
    queries: pl.DataFrame | None = None
    prefix_cache_dir: Path | None = None


def train_from_inputs(
    inputs: StageInputs,
    out_dir: Path,
    configs: tuple[ModelConfig, TrainConfig],
    init_from: Path | None = None,
    hooks: StageHooks = StageHooks(),
    extra: dict[str, Any] | None = None,
) -> StageResult:
    """Build model and samplers and train one stage (any world size); the result carries the
    trained, prepared model. ``extra`` gets the curriculum and is part of the checkpoint."""
    model_config, train_config = configs
    rank, world = rank_world()
    spec = load_curriculum(inputs.curriculum)
    seed_everything(train_config.seed)  # identical initial weights on every rank
    model = NaicsModel(model_config)
    place_model(model, train_config)
    codes = inputs.codes.sort("index")
    train_q = _split(inputs.queries, *train_config.query_splits)
    val_q = _split(inputs.queries, "validation")
    model.prepare(
        code_channel_texts(codes),
        queries=train_q["text"].to_list() + val_q["text"].to_list(),
        cache_dir=inputs.prefix_cache_dir,
    )
    train_codes = train_q["index"].to_numpy().astype(np.int64)
    query_codes = np.concatenate([train_codes, val_q["index"].to_numpy().astype(np.int64)])
    level = codes["level"].to_numpy()

    def triplets(start: int) -> Iterator[TripletBatch]:
        size, seed, shards = train_config.batch_size, train_config.seed, Path(inputs.triplets_dir)
        sampler = TripletSampler(shards, level, spec, size, seed, rank=rank, world_size=world)
        return continued(sampler, start)

    def query_batches(start: int) -> Iterator[np.ndarray]:
        size, seed = train_config.query_batch_size, train_config.seed
        return continued(
            QuerySampler(train_codes, size, seed=seed, rank=rank, world_size=world), start
        )

    if val_q.height:
        six = codes["index"].to_numpy()[six_digit_mask(codes)]  # codes sorted by index
        val_ids = np.arange(train_q.height, train_q.height + val_q.height)
        validate = query_validator(val_ids, query_codes[val_ids], six, train_config.temperature)
        hooks = dataclasses.replace(hooks, validate=validate)
    use_queries = train_q.height > 0 and train_config.query_batch_size > 0
    data = StageData(
        triplets,
        query_batches if use_queries else None,
        query_codes if use_queries else None,
        codes,
    )
    extra = {"curriculum": spec.to_dict(), **(extra or {})}
    result = train_stage(model, data, train_config, Path(out_dir), init_from, hooks, extra)
    return dataclasses.replace(result, model=model)


def continued(stream: Iterable[T], start: int) -> Iterator[T]:
    """The stream from its batch ``start`` on: a resumed stage draws the very batches an
    uninterrupted run would (the ``start`` before it are drawn and dropped)."""
    return itertools.islice(stream, start, None)


def _split(queries: pl.DataFrame | None, *splits: str) -> pl.DataFrame:
    empty = pl.DataFrame(schema={"index": pl.Int32, "text": pl.String})
    if queries is None:
        return empty
    return queries.filter(pl.col("split").is_in(list(splits))).select("index", "text")
