"""The three curriculum stages: ``stage_01_easy`` -> ``stage_02_medium`` -> ``stage_03_hard``.

Each stage starts from the previous stage's weights, streams its curriculum's triplets, is exactly
one MLflow run (``<revision>/<stage>``), ends with the evaluation against both baselines on the
held-out test split, and leaves ``models/<stage>/`` (checkpoint, code table, entry memory,
the Classifier's points, metrics, plot). Two asset checks read the stage's own metrics: it must
beat both baselines, and no expert may starve.
Re-materializing an interrupted stage resumes from its last checkpoint.
"""

import json
from pathlib import Path

import dagster as dg
from pydantic import Field

from naics_assets.assets.codes import naics_codes, naics_index_entries
from naics_assets.assets.distances import naics_distances
from naics_assets.assets.triplets import naics_triplets
from naics_assets.checks import result as check_result
from naics_assets.checks import stage_checks
from naics_assets.partitions import revision_partitions
from naics_assets.resources import ArtifactStore, RealTextSource
from naics_assets.tracking import MlflowTracker
from naics_ml import invariants
from naics_ml.model_config import ModelConfig
from naics_ml.train_config import TrainConfig

_MODEL = ModelConfig()  # the one set of model defaults; the launchpad shows them


class ModelSettings(dg.Config):
    """The model of the first stage; later stages inherit it from their starting checkpoint."""

    base_model: str = Field(default=_MODEL.base_model, description="Hugging Face name or path.")
    lora_r: int = _MODEL.lora_r
    lora_alpha: int = _MODEL.lora_alpha
    lora_dropout: float = Field(
        default=_MODEL.lora_dropout, description="Dropout on the LoRA adapters' input."
    )
    lora_layers: int = Field(
        default=_MODEL.lora_layers, description="LoRA on the top N layers (rest cached)."
    )
    embedding_dim: int = _MODEL.embedding_dim
    curvature: float = _MODEL.curvature
    balance_weight: float = Field(
        default=_MODEL.balance_weight,
        description="λ of the expert load-balancing loss (0.01 let experts collapse).",
    )
    line_channels: list[str] = Field(
        default=list(_MODEL.line_channels),
        description="Channels read line by line (mean of the lines' vectors); [] = whole texts.",
    )


_TRAIN = TrainConfig()  # the one set of training defaults; the launchpad shows them


class StageConfig(dg.Config):
    """Hyperparameters of one stage, editable in the launchpad (defaults: ``TrainConfig``)."""

    curriculum: str = Field(default="", description="Packaged name or YAML path; empty = default.")
    steps: int = _TRAIN.steps
    batch_size: int = _TRAIN.batch_size
    learning_rate: float = Field(default=_TRAIN.learning_rate, description="LoRA adapters.")
    fusion_learning_rate: float = Field(
        default=_TRAIN.fusion_learning_rate,
        description="Fusion/MoE (trained from scratch); 0 = learning_rate.",
    )
    warmup_steps: int = _TRAIN.warmup_steps
    temperature: float = _TRAIN.temperature
    query_batch_size: int = Field(
        default=_TRAIN.query_batch_size, description="Labelled queries per step (short texts)."
    )
    query_loss_weight: float = _TRAIN.query_loss_weight
    query_candidates: str = Field(
        default=_TRAIN.query_candidates,
        description="'all' six-digit codes in the query softmax, or 'step'.",
    )
    query_splits: list[str] = Field(
        default=list(_TRAIN.query_splits),
        description="Query kinds that train the query path: index-entry splits (never "
        "validation/test) and naics_ml.training_texts' extra kinds.",
    )
    hierarchy_loss_weight: float = Field(
        default=_TRAIN.hierarchy_loss_weight,
        description="Stress loss: Lorentz distance = scale * tree distance.",
    )
    hierarchy_pairs: int = _TRAIN.hierarchy_pairs
    hierarchy_scale: float = _TRAIN.hierarchy_scale
    seed: int = _TRAIN.seed
    checkpoint_every: int = _TRAIN.checkpoint_every
    validation_every: int = _TRAIN.validation_every
    log_every: int = _TRAIN.log_every
    negative_bank: bool = Field(
        default=_TRAIN.negative_bank,
        description="Negatives from the negative bank (fast); False = exact loss.",
    )
    bank_refresh_every: int = _TRAIN.bank_refresh_every
    bank_live_positives: bool = Field(
        default=_TRAIN.bank_live_positives,
        description="Encode triplet positives live (slower) instead of the bank.",
    )


class EasyStageConfig(StageConfig):
    steps: int = 200  # 739 (anchor, positive) pairs: ~9 passes at batch 32
    model: ModelSettings = Field(default_factory=ModelSettings)


class MediumStageConfig(StageConfig):
    steps: int = 300


class HardStageConfig(StageConfig):
    steps: int = 600
    # Its exclusion and same-sector negatives pull against the tree, so the stress weighs more;
    # the query loss weighs more too, to keep retrieval. From the same 02_medium (validation):
    # stress 16 / query 1: MAP 0.864, parent@1 0.951, top-1 0.679; 32 / 1: MAP 0.902, top-1
    # 0.653; 32 / 2: MAP 0.899, top-1 0.684; 40 / 2: MAP 0.913, parent@1 0.968, top-1 0.679.
    # With the extra real-text-like queries (naics_ml.training_texts), 40 ended at MAP 0.906,
    # within-sector Spearman 0.771; 60 at MAP 0.935, 0.825, same validation (docs/results.md).
    hierarchy_loss_weight: float = Field(
        default=60.0, description="Stress loss: Lorentz distance = scale * tree distance."
    )
    query_loss_weight: float = Field(
        default=2.0, description="Index-entry query InfoNCE (1 in the earlier stages)."
    )


def train_stage_asset(
    context: dg.AssetExecutionContext,
    config: StageConfig,
    store: ArtifactStore,
    mlflow: MlflowTracker,
    stage: str,
    previous: str | None,
    realtext: RealTextSource,
) -> dg.MaterializeResult:
    """Shared body of the three stage assets (heavy imports stay inside)."""
    import dataclasses

    import polars as pl

    from naics_ml.checkpoint import is_complete, load_checkpoint
    from naics_ml.classify import Classifier
    from naics_ml.codes import six_digit_codes
    from naics_ml.curriculum import load_curriculum, packaged_curriculum_path
    from naics_ml.distributed import run_stage
    from naics_ml.entry_memory import load_stage_memory
    from naics_ml.io import atomic_write_text
    from naics_ml.plots import plot_history
    from naics_ml.stage_metrics import (
        HEADLINE,
        baseline_metrics,
        comparison_table,
        evaluate_stage,
        evaluation_sets,
    )
    from naics_ml.taxonomy import matrix_from_pairs
    from naics_ml.training_texts import training_queries

    revision = context.partition_key
    if config.curriculum.endswith((".yaml", ".yml")):
        curriculum_path = Path(config.curriculum)
    else:
        curriculum_path = packaged_curriculum_path(config.curriculum or stage.split("_", 1)[1])
    spec = load_curriculum(curriculum_path)
    out_dir = store.model_dir(revision, stage)
    init_from = None
    if previous is not None:
        init_from = store.model_dir(revision, previous)
        if not is_complete(init_from):
            raise dg.Failure(f"{stage} starts from {previous}, which has no finished checkpoint")
        model_config = ModelConfig.from_dict(load_checkpoint(init_from)["model_config"])
    else:
        model_config = ModelConfig.from_dict(config.model.model_dump())
    settings = config.model_dump(exclude={"curriculum", "model"})
    train_config = TrainConfig.from_dict(settings)  # every other field is a TrainConfig field
    codes = pl.read_parquet(store.codes_path(revision))
    entries = pl.read_parquet(store.index_entries_path(revision))
    tree = matrix_from_pairs(pl.read_parquet(store.distances_path(revision)), codes.height)
    labelled = realtext.load(six_digit_codes(codes).tolist())
    for name, file in (("eval", realtext.eval_file), ("val", realtext.val_file)):
        if labelled[name] is None:
            context.log.info(f"real-text {name} set skipped: no {file} in {realtext.local_dir!r}")
    extra = training_queries(codes, entries, labelled["train"], seed=train_config.seed)
    queries = pl.concat([entries, extra], how="vertical_relaxed")
    sets = evaluation_sets(
        codes, queries, train_config.query_splits, labelled["eval"], labelled["val"]
    )

    tags = {
        "dagster_run_id": context.run.run_id,
        "dagster_asset_key": context.asset_key.to_user_string(),
        "naics_revision": revision,
        "stage": stage,
        "init_from": str(init_from or ""),
    }
    with mlflow.start_run(f"{revision}/{stage}", tags) as run:
        params = {f"model.{k}": v for k, v in model_config.to_dict().items()}
        params |= {f"train.{k}": v for k, v in train_config.to_dict().items()}
        params |= {f"curriculum.{k}": v for k, v in spec.to_dict().items()}
        run.log_params(params)
        history: list[tuple[int, dict[str, float]]] = []

        def on_metrics(step: int, metrics: dict[str, float]) -> None:
            run.log_metrics(metrics, step)
            history.append((step, dict(metrics)))

        result = run_stage(
            codes,
            store.triplets_dir(revision),
            curriculum_path,
            out_dir,
            model_config,
            train_config,
            queries=queries,
            init_from=init_from,
            extra={"revision": revision, "stage": stage},
            progress=True,
            on_metrics=on_metrics,
            prefix_cache_dir=store.revision_dir(revision) / "prefix_cache",
        )
        # the in-memory model is already prepared for these codes: no second prepare
        memory = load_stage_memory(result.checkpoint)  # what from_checkpoint will load
        classifier = Classifier(result.model, codes, train_config.temperature, memory=memory)
        metrics = evaluate_stage(classifier, codes, tree, entries, sets, out_dir)
        classifier.save_points(out_dir)  # Classifier.from_checkpoint loads in seconds
        metrics |= baseline_metrics(
            codes,
            tree,
            entries,
            model_config.base_model,
            store.revision_dir(revision)
            / "baselines"
            / f"{Path(model_config.base_model).name}.json",
            sets,
        )
        metrics |= {"train_wall_s": result.wall_time_s, "skipped_steps": result.skipped_steps}
        run.log_metrics(metrics, result.steps)
        atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=1))
        plot = plot_history(history, out_dir / "metrics.png", title=f"{revision}/{stage}")
        run.log_artifact(curriculum_path)
        run.log_artifact(plot)
        run.log_artifact(out_dir / "metrics.json")
        link, run_id = run.link, run.run_id

    last = history[-1][1] if history else {}
    utilization = {k: v for k, v in last.items() if k.startswith("expert_utilization")}
    return dg.MaterializeResult(
        check_results=[
            check_result("beats_baselines", invariants.check_beats_baselines(metrics, HEADLINE)),
            check_result(
                "experts_balanced",
                invariants.check_expert_balance(utilization),
                dg.AssetCheckSeverity.WARN,
            ),
        ],
        metadata={
            "checkpoint": dg.MetadataValue.path(str(result.checkpoint)),
            "mlflow_run": dg.MetadataValue.url(link),
            "mlflow_run_id": run_id,
            "steps": result.steps,
            "skipped_steps": result.skipped_steps,
            "train_wall_s": round(result.wall_time_s, 1),
            "curriculum": dg.MetadataValue.path(str(curriculum_path)),
            "init_from": str(init_from) if init_from else "base model",
            "training_queries": dg.MetadataValue.json(
                dict(queries.group_by("split").len().sort("split").iter_rows())
            ),
            "evaluation": dg.MetadataValue.md(comparison_table(metrics)),
            "expert_utilization": dg.MetadataValue.json(utilization),
            **{name: dg.MetadataValue.float(float(metrics[name])) for name in HEADLINE},
            "all_metrics": dg.MetadataValue.json(
                {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
            ),
            "model_config": dg.MetadataValue.json(dataclasses.asdict(model_config)),
        },
    )


STAGE_DEPS = [naics_codes, naics_index_entries, naics_distances, naics_triplets]


@dg.asset(
    partitions_def=revision_partitions,
    deps=STAGE_DEPS,
    group_name="training",
    kinds={"pytorch", "mlflow"},
    check_specs=stage_checks("stage_01_easy"),
)
def stage_01_easy(
    context: dg.AssetExecutionContext,
    config: EasyStageConfig,
    store: ArtifactStore,
    mlflow: MlflowTracker,
    realtext: RealTextSource,
) -> dg.MaterializeResult:
    """Stage 1: sibling six-digit codes against easy negatives, from the frozen base model."""
    return train_stage_asset(context, config, store, mlflow, "stage_01_easy", None, realtext)


@dg.asset(
    partitions_def=revision_partitions,
    deps=[*STAGE_DEPS, stage_01_easy],
    group_name="training",
    kinds={"pytorch", "mlflow"},
    check_specs=stage_checks("stage_02_medium"),
)
def stage_02_medium(
    context: dg.AssetExecutionContext,
    config: MediumStageConfig,
    store: ArtifactStore,
    mlflow: MlflowTracker,
    realtext: RealTextSource,
) -> dg.MaterializeResult:
    """Stage 2: five- and six-digit codes, closer negatives; starts from stage 1's weights."""
    return train_stage_asset(
        context, config, store, mlflow, "stage_02_medium", "stage_01_easy", realtext
    )


@dg.asset(
    partitions_def=revision_partitions,
    deps=[*STAGE_DEPS, stage_02_medium],
    group_name="training",
    kinds={"pytorch", "mlflow"},
    check_specs=stage_checks("stage_03_hard"),
)
def stage_03_hard(
    context: dg.AssetExecutionContext,
    config: HardStageConfig,
    store: ArtifactStore,
    mlflow: MlflowTracker,
    realtext: RealTextSource,
) -> dg.MaterializeResult:
    """Stage 3: all levels, hardest negatives and exclusions; starts from stage 2's weights."""
    return train_stage_asset(
        context, config, store, mlflow, "stage_03_hard", "stage_02_medium", realtext
    )
