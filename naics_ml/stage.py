"""One curriculum stage end to end: train, evaluate, and leave a complete stage folder.

The Dagster stage assets call :func:`run_stage` with plain configs and paths; everything they
show comes back in a :class:`StageReport`. The folder's files are named by
:class:`naics_ml.stage_folder.StageFolder`: training writes the checkpoint, code table, negative
bank and summary (:mod:`naics_ml.training.loop`); this module adds the entry memory, the blend
chosen on validation data, the Classifier's points, the metrics and the training curves.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from naics_ml.io import atomic_write_text
from naics_ml.model.config import ModelConfig
from naics_ml.revision_folder import RevisionFolder
from naics_ml.stage_folder import StageFolder
from naics_ml.stage_table import StageSpec
from naics_ml.training.config import TrainConfig
from naics_ml.triplets.curriculum import packaged_curriculum_path

__all__ = [
    "StageOrderError",
    "StagePaths",
    "StageReport",
    "StageRequest",
    "reevaluate_stage",
    "resolve_curriculum",
    "run_stage",
    "stage_model_config",
]

History = list[tuple[int, dict[str, float]]]
LEVEL_HEADS_CACHE = "level_heads.pt"  # in the revision's baselines folder: shared by its stages


class StageOrderError(RuntimeError):
    """A stage was asked to start from a previous stage that has not finished."""


@dataclass(frozen=True)
class StagePaths:
    """Where a stage reads its inputs and writes its folder (one revision's artifacts)."""

    codes: Path
    entries: Path
    distances: Path
    triplets: Path
    out_dir: Path
    prefix_cache: Path  # the frozen prefix, shared by the stages of a revision
    baselines: Path  # folder caching the baselines' metrics
    init_from: Path | None = None  # the previous stage's folder

    @classmethod
    def in_revision(cls, revision: RevisionFolder, stage: StageSpec) -> StagePaths:
        """Where ``stage`` of the stage table reads and writes in a revision folder."""
        previous = revision.stage(stage.previous).path if stage.previous else None
        return cls(
            codes=revision.codes,
            entries=revision.entries,
            distances=revision.distances,
            triplets=revision.triplets,
            out_dir=revision.stage(stage.name).path,
            prefix_cache=revision.prefix_cache,
            baselines=revision.baselines,
            init_from=previous,
        )


@dataclass(frozen=True)
class StageRequest:
    """Everything a stage needs besides files. ``realtext`` holds the labelled real-text frames
    (``eval``: evaluation only; ``val``: chooses settings; ``train``: trains the query path);
    a missing one is None and skipped."""

    name: str  # e.g. "2022/stage_01_easy", the plot's title
    paths: StagePaths
    curriculum: Path
    model_config: ModelConfig
    train_config: TrainConfig
    realtext: Mapping[str, pl.DataFrame | None] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in the checkpoint


@dataclass(frozen=True)
class StageReport:
    """What a finished stage produced, for the caller to show and log."""

    folder: StageFolder
    steps: int
    skipped_steps: int
    train_wall_s: float
    metrics: dict[str, float]
    history: History  # (step, metrics) as training reported them
    training_queries: dict[str, int]  # training and validation queries by kind
    resumed_from: int = 0  # the checkpoint step training continued from (0: a fresh start)

    @property
    def expert_utilization(self) -> dict[str, float]:
        last = self.history[-1][1] if self.history else {}
        return {k: v for k, v in last.items() if k.startswith("expert_utilization")}


def resolve_curriculum(setting: str, stage: StageSpec) -> Path:
    """A YAML path as given, a packaged curriculum's name, or (empty) the stage's own one."""
    if setting.endswith((".yaml", ".yml")):
        return Path(setting)
    return packaged_curriculum_path(setting or stage.curriculum)


def stage_model_config(init_from: Path | None, first: ModelConfig | None) -> ModelConfig:
    """The first stage uses ``first`` (default: ``ModelConfig()``); a later stage inherits its
    starting checkpoint's model."""
    from naics_ml.training.checkpoint import is_complete, load_checkpoint

    if init_from is None:
        return first or ModelConfig()
    if not is_complete(init_from):
        raise StageOrderError(f"{init_from} has no finished checkpoint to start from")
    return ModelConfig.from_dict(load_checkpoint(init_from)["model_config"])


def run_stage(
    request: StageRequest, on_metrics: Callable[[int, dict[str, float]], None] | None = None
) -> StageReport:
    """Train the stage (resuming an interrupted run), evaluate it on the index test split, the
    real-text sets and against both baselines, and write its folder. ``on_metrics`` sees every
    logged step (an MLflow run, say)."""
    from naics_ml.data.training_texts import training_queries

    paths = request.paths
    codes = pl.read_parquet(paths.codes)
    entries = pl.read_parquet(paths.entries)
    extra = training_queries(
        codes, entries, request.realtext.get("train"), seed=request.train_config.seed
    )
    queries = pl.concat([entries, extra], how="vertical_relaxed")
    history: History = []

    def record(step: int, metrics: dict[str, float]) -> None:
        history.append((step, dict(metrics)))
        if on_metrics is not None:
            on_metrics(step, metrics)

    result = _train(request, codes, queries, record)
    from naics_ml.inference.classifier import Classifier
    from naics_ml.inference.entry_memory import load_stage_memory

    # the trained model is already prepared for these codes: no second prepare
    memory = load_stage_memory(paths.out_dir)
    temperature = request.train_config.temperature
    classifier = Classifier(result.model, codes, temperature, memory=memory)
    metrics = _evaluate(request, classifier, codes, entries, queries)
    metrics |= {"train_wall_s": result.wall_time_s, "skipped_steps": result.skipped_steps}
    folder = StageFolder(paths.out_dir)
    atomic_write_text(folder.metrics, json.dumps(metrics, indent=1))
    from naics_ml.evaluation.plots import plot_history

    plot_history(history, folder.plot, title=request.name)
    return StageReport(
        folder,
        result.steps,
        result.skipped_steps,
        result.wall_time_s,
        metrics,
        history,
        dict(queries.group_by("split").len().sort("split").iter_rows()),
        result.resumed_from,
    )


def _train(
    request: StageRequest,
    codes: pl.DataFrame,
    queries: pl.DataFrame,
    on_metrics: Callable[[int, dict[str, float]], None],
) -> Any:
    """Train, then record the labelled entries the query path learned from (entry memory)."""
    from naics_ml.training.loop import StageHooks
    from naics_ml.training.runner import StageInputs, train_from_inputs

    paths, config = request.paths, request.train_config
    inputs = StageInputs(codes, paths.triplets, request.curriculum, queries, paths.prefix_cache)
    result = train_from_inputs(
        inputs,
        paths.out_dir,
        (request.model_config, config),
        paths.init_from,
        StageHooks(on_metrics=on_metrics),
        request.extra,
    )
    _save_memory(request, queries)
    return result


def _save_memory(request: StageRequest, queries: pl.DataFrame) -> None:
    """The labelled entries the query path learned from: the Classifier's entry memory."""
    from naics_ml.inference.entry_memory import memory_entries, save_stage_memory

    splits = request.train_config.query_splits
    save_stage_memory(request.paths.out_dir, memory_entries(queries, splits))


def reevaluate_stage(request: StageRequest) -> dict[str, float]:
    """A trained stage's evaluation again, with the current code and no training: rewrites its
    entry memory, blend, calibration, points and metrics (training figures kept)."""
    from naics_ml.data.training_texts import training_queries
    from naics_ml.inference.classifier import Classifier
    from naics_ml.inference.entry_memory import MemoryConfig

    paths = request.paths
    codes, entries = pl.read_parquet(paths.codes), pl.read_parquet(paths.entries)
    train_texts = request.realtext.get("train")
    extra = training_queries(codes, entries, train_texts, seed=request.train_config.seed)
    queries = pl.concat([entries, extra], how="vertical_relaxed")
    _save_memory(request, queries)
    config = request.train_config  # evaluated where and as the stage trained
    classifier = Classifier.from_checkpoint(
        paths.out_dir,
        memory_config=MemoryConfig(),
        precision=config.precision,
        device=config.device,
    )
    metrics = _evaluate(request, classifier, codes, entries, queries)
    folder = StageFolder(paths.out_dir)
    before = json.loads(folder.metrics.read_text()) if folder.metrics.is_file() else {}
    metrics |= {k: before[k] for k in ("train_wall_s", "skipped_steps") if k in before}
    atomic_write_text(folder.metrics, json.dumps(metrics, indent=1))
    return metrics


def _evaluate(
    request: StageRequest,
    classifier: Any,
    codes: pl.DataFrame,
    entries: pl.DataFrame,
    queries: pl.DataFrame,
) -> dict[str, float]:
    """Every metric of the stage and the baselines; saves level heads, blend, calibration and
    points."""
    from naics_ml.data.taxonomy import matrix_from_pairs
    from naics_ml.evaluation.stage_report import baseline_metrics, evaluate_stage
    from naics_ml.evaluation.stage_report import evaluation_sets as make_sets
    from naics_ml.inference.level_heads import save_level_heads

    paths, config = request.paths, request.train_config
    heads = classifier.fit_level_heads(cache=paths.baselines / LEVEL_HEADS_CACHE)
    save_level_heads(paths.out_dir, heads)
    tree: np.ndarray = matrix_from_pairs(pl.read_parquet(paths.distances), codes.height)
    realtext = request.realtext
    sets = make_sets(codes, queries, config.query_splits, realtext.get("eval"), realtext.get("val"))
    metrics = evaluate_stage(classifier, codes, tree, entries, sets, paths.out_dir)
    classifier.save_points(paths.out_dir)  # Classifier.from_checkpoint then loads in seconds
    base = request.model_config.base_model
    cache = paths.baselines / f"{Path(base).name}.json"
    return metrics | baseline_metrics(codes, tree, entries, base, cache, sets)
