"""The curriculum stages, one asset per row of ``naics_ml.stage_table`` (by default
``stage_01_easy`` -> ``stage_02_medium`` -> ``stage_03_hard``), all made by :func:`stage_asset`.

Each stage starts from the previous stage's weights, streams its curriculum's triplets, is exactly
one MLflow run (``<revision>/<stage>``), ends with the evaluation against both baselines on the
held-out test split, and leaves ``models/<stage>/`` (checkpoint, code table, entry memory,
the Classifier's points, metrics, plot). Two asset checks read the stage's own metrics: it must
beat both baselines, and no expert may starve.
Re-materializing an interrupted stage resumes from its last checkpoint.

``preset`` (``naics_ml.training.presets``: ``cpu``, the defaults, or ``gpu``) fills every field
that depends on the machine (base model, LoRA layers, batch sizes, device, precision) and that
the launchpad leaves empty; a field given a value keeps it.
"""

from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field, create_model

from naics_assets.assets.codes import naics_codes, naics_index_entries
from naics_assets.assets.distances import naics_distances
from naics_assets.assets.labels import reviewed_labels
from naics_assets.assets.triplets import naics_triplets
from naics_assets.checks import result as check_result
from naics_assets.checks import stage_checks
from naics_assets.partitions import revision_partitions
from naics_assets.resources import ArtifactStore, RealTextSource
from naics_assets.tracking import MlflowTracker
from naics_ml.model.config import ModelConfig
from naics_ml.stage_table import STAGES, StageSpec
from naics_ml.training.config import TrainConfig
from naics_ml.training.presets import PRESETS, PresetName, get_preset

if TYPE_CHECKING:
    from naics_ml.stage import StageReport, StageRequest

_MODEL = ModelConfig()  # the one set of model defaults; the launchpad shows them


def from_preset(section: str, name: str, what: str = "") -> Any:
    """A field the preset fills when it is left empty; its description lists each preset's
    value (read from ``naics_ml.training.presets``, the one place they are set)."""
    values = ", ".join(f"{p}: {PRESETS[p].value(section, name)}" for p in PRESETS)
    return Field(default=None, description=f"{what} Empty: the preset's ({values}).".lstrip())


class ModelSettings(dg.Config):
    """The model of the first stage; later stages inherit it from their starting checkpoint."""

    base_model: str | None = from_preset("model", "base_model", "Hugging Face name or path.")
    lora_r: int | None = from_preset("model", "lora_r")
    lora_alpha: int | None = from_preset("model", "lora_alpha")
    lora_dropout: float = Field(
        default=_MODEL.lora_dropout, description="Dropout on the LoRA adapters' input."
    )
    lora_layers: int | None = from_preset(
        "model", "lora_layers", "LoRA on the top N layers (rest cached)."
    )
    embedding_dim: int | None = from_preset("model", "embedding_dim")
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

    preset: PresetName = Field(
        default="cpu",
        description="Machine settings for the empty fields: "
        + "; ".join(f"{p.name}: {p.description}" for p in PRESETS.values())
        + " (docs/training.md).",
    )
    curriculum: str = Field(default="", description="Packaged name or YAML path; empty = default.")
    steps: int = _TRAIN.steps
    batch_size: int | None = from_preset("train", "batch_size")
    learning_rate: float = Field(default=_TRAIN.learning_rate, description="LoRA adapters.")
    fusion_learning_rate: float = Field(
        default=_TRAIN.fusion_learning_rate,
        description="Fusion/MoE (trained from scratch); 0 = learning_rate.",
    )
    warmup_steps: int = _TRAIN.warmup_steps
    temperature: float = _TRAIN.temperature
    query_batch_size: int | None = from_preset(
        "train", "query_batch_size", "Labelled queries per step (short texts)."
    )
    query_loss_weight: float = _TRAIN.query_loss_weight
    query_candidates: str = Field(
        default=_TRAIN.query_candidates,
        description="'all' six-digit codes in the query softmax, or 'step'.",
    )
    query_splits: list[str] = Field(
        default=list(_TRAIN.query_splits),
        description="Query kinds that train the query path: index-entry splits (never "
        "validation/test) and naics_ml.data.training_texts' extra kinds.",
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
    device: str | None = from_preset(
        "train", "device", "Where it trains and is evaluated: auto, cpu, cuda, cuda:N or mps."
    )
    precision: str | None = from_preset(
        "train", "precision", "Transformer layers: float32, bfloat16, or auto (where native)."
    )


def stage_config_class(spec: StageSpec) -> type[StageConfig]:
    """The launchpad config of one stage: ``StageConfig`` with the stage's own settings as
    defaults (``naics_ml.stage_table``), and the model settings for the first stage."""
    fields: dict[str, Any] = {}
    for name, value in spec.train.items():
        if name in StageConfig.model_fields:
            base = StageConfig.model_fields[name]
            fields[name] = (base.annotation, Field(default=value, description=base.description))
    if spec.model:
        fields["model"] = (ModelSettings, Field(default_factory=ModelSettings))
    words = [w.title() for w in spec.name.split("_") if w.isalpha() and w != "stage"]
    config = create_model(f"{''.join(words)}StageConfig", __base__=StageConfig, **fields)
    config.__doc__ = f"Settings of {spec.name}. {spec.why}".strip()
    return config


STAGE_CONFIGS: dict[str, type[StageConfig]] = {s.name: stage_config_class(s) for s in STAGES}


def stage_configs(config: StageConfig, spec: StageSpec) -> tuple[ModelConfig | None, TrainConfig]:
    """The launchpad's values over its preset's: the model (None for a stage without model
    settings, which inherits its checkpoint's) and the training config."""
    preset = get_preset(config.preset)
    train = config.model_dump(exclude={"curriculum", "model", "preset"}, exclude_none=True)
    model = getattr(config, "model", None)
    first = None if model is None else preset.model_config(model.model_dump(exclude_none=True))
    return first, preset.train_config({**spec.train, **train})


def stage_request(
    context: dg.AssetExecutionContext,
    config: StageConfig,
    resources: tuple[ArtifactStore, RealTextSource],
    spec: StageSpec,
) -> "StageRequest":
    """Dagster config and resources -> the library's request (configs and paths). Every setting
    is checked here, before the stage's MLflow run, its folder or its base model is touched."""
    import polars as pl

    from naics_ml.data.codes import six_digit_codes
    from naics_ml.model.config import check_base_model
    from naics_ml.records.labels import with_reviewed_labels
    from naics_ml.stage import (
        StageOrderError,
        StagePaths,
        StageRequest,
        resolve_curriculum,
        stage_model_config,
    )
    from naics_ml.triplets.curriculum import load_curriculum

    store, realtext = resources
    first, train_config = stage_configs(config, spec)  # the launchpad's over the preset's
    curriculum = resolve_curriculum(config.curriculum, spec)
    load_curriculum(curriculum)  # validates the file, naming it and the field
    revision = context.partition_key
    paths = StagePaths.in_revision(store.revision(revision), spec)
    try:
        model_config = stage_model_config(paths.init_from, first)
    except StageOrderError as error:
        raise dg.Failure(f"{spec.name} starts from {spec.previous}: {error}") from error
    check_base_model(model_config.base_model)
    labelled = realtext.load(six_digit_codes(pl.read_parquet(paths.codes)).tolist())
    for name, file in (("eval", realtext.eval_file), ("val", realtext.val_file)):
        if labelled[name] is None:
            context.log.info(f"real-text {name} set skipped: no {file} in {realtext.local_dir!r}")
    labels = store.revision(revision).reviewed_labels
    labelled, trained_on = with_reviewed_labels(labelled, labels)
    return StageRequest(
        name=f"{revision}/{spec.name}",
        paths=paths,
        curriculum=curriculum,
        model_config=model_config,
        train_config=train_config,
        realtext=labelled,
        extra={"revision": revision, "stage": spec.name, "reviewed_labels": trained_on},
    )


def train_stage_asset(
    context: dg.AssetExecutionContext,
    config: StageConfig,
    resources: tuple[ArtifactStore, MlflowTracker, RealTextSource],
    spec: StageSpec,
) -> dg.MaterializeResult:
    """The body of every stage asset: one MLflow run around ``naics_ml.stage``."""
    store, mlflow, realtext = resources
    request = stage_request(context, config, (store, realtext), spec)
    tags = {
        "dagster_run_id": context.run.run_id,
        "dagster_asset_key": context.asset_key.to_user_string(),
        "naics_revision": context.partition_key,
        "stage": spec.name,
        "init_from": str(request.paths.init_from or ""),
        "preset": config.preset,
        "artifacts_dir": str(store.base().resolve()),
    }
    with store.lock(context):  # one materialization of this stage and revision at a time
        # holding the lock, a run of this stage still RUNNING in MLflow belongs to a dead process
        for run_id in mlflow.close_interrupted_runs(request.name, tags["artifacts_dir"]):
            context.log.warning(f"MLflow run {run_id} of a killed materialization set KILLED")
        report, metadata = _tracked_stage(request, mlflow, tags)
    return dg.MaterializeResult(check_results=stage_check_results(report), metadata=metadata)


def _tracked_stage(
    request: "StageRequest", mlflow: MlflowTracker, tags: dict[str, str]
) -> tuple["StageReport", dict[str, object]]:
    """``naics_ml.stage.run_stage`` inside one MLflow run; the report and the asset metadata."""
    from naics_ml.stage import run_stage

    with mlflow.start_run(request.name, tags) as run:
        run.log_params(stage_params(request))
        report = run_stage(request, lambda step, metrics: run.log_metrics(metrics, step))
        run.log_metrics(report.metrics, report.steps)
        folder = report.folder
        for artifact in (request.curriculum, folder.plot, folder.metrics, folder.confidence_plot):
            if artifact.is_file():
                run.log_artifact(artifact)
        metadata = stage_metadata(request, report, run.link, run.run_id)
    return report, metadata


def stage_params(request: "StageRequest") -> dict:
    """MLflow params: the model, train and curriculum settings, prefixed."""
    from naics_ml.triplets.curriculum import load_curriculum

    params = {f"model.{k}": v for k, v in request.model_config.to_dict().items()}
    params |= {f"train.{k}": v for k, v in request.train_config.to_dict().items()}
    spec = load_curriculum(request.curriculum)
    params |= {f"curriculum.{k}": v for k, v in spec.to_dict().items()}
    labels = request.extra.get("reviewed_labels", {})
    return params | {"reviewed_labels": ", ".join(f"{f}: {n}" for f, n in labels.items()) or "none"}


def stage_check_results(report: "StageReport") -> list[dg.AssetCheckResult]:
    from naics_ml.evaluation.stage_checks import check_beats_baselines, check_expert_balance
    from naics_ml.evaluation.stage_report import HEADLINE

    beats = check_beats_baselines(report.metrics, HEADLINE)
    balanced = check_expert_balance(report.expert_utilization)
    return [
        check_result("beats_baselines", beats),
        check_result("experts_balanced", balanced, dg.AssetCheckSeverity.WARN),
    ]


def stage_metadata(
    request: "StageRequest", report: "StageReport", link: str, run_id: str
) -> dict[str, object]:
    from naics_ml.evaluation.stage_report import HEADLINE
    from naics_ml.evaluation.tables import comparison_table, confidence_table, sector_table

    metrics = report.metrics
    return {
        "checkpoint": dg.MetadataValue.path(str(report.folder.checkpoint)),
        "mlflow_run": dg.MetadataValue.url(link),
        "mlflow_run_id": run_id,
        "steps": report.steps,
        "resumed_from_step": report.resumed_from,
        "skipped_steps": report.skipped_steps,
        "train_wall_s": round(report.train_wall_s, 1),
        "curriculum": dg.MetadataValue.path(str(request.curriculum)),
        "init_from": str(request.paths.init_from or "base model"),
        "training_queries": dg.MetadataValue.json(report.training_queries),
        "evaluation": dg.MetadataValue.md(comparison_table(metrics)),
        "by_sector": dg.MetadataValue.md(sector_table(metrics)),
        "confidence": dg.MetadataValue.md(confidence_table(metrics)),
        "expert_utilization": dg.MetadataValue.json(report.expert_utilization),
        **{name: dg.MetadataValue.float(float(metrics[name])) for name in HEADLINE},
        "all_metrics": dg.MetadataValue.json(
            {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        ),
        "model_config": dg.MetadataValue.json(request.model_config.to_dict()),
        "reviewed_labels": dg.MetadataValue.json(request.extra.get("reviewed_labels", {})),
    }


STAGE_DEPS = [naics_codes, naics_index_entries, naics_distances, naics_triplets, reviewed_labels]
# new reviewed labels wait for the next stage run; they do not retrain the chain on their own
TRAIN_WHEN = dg.AutomationCondition.eager().ignore(dg.AssetSelection.assets(reviewed_labels))


def stage_asset(spec: StageSpec) -> dg.AssetsDefinition:
    """The asset of one row of the stage table: trains after its previous stage."""
    config_class = STAGE_CONFIGS[spec.name]
    previous = [dg.AssetKey(spec.previous)] if spec.previous else []

    @dg.asset(
        name=spec.name,
        description=spec.summary,
        partitions_def=revision_partitions,
        automation_condition=TRAIN_WHEN,
        deps=[*STAGE_DEPS, *previous],
        group_name="training",
        kinds={"pytorch", "mlflow"},
        check_specs=stage_checks(spec.name),
    )
    def _stage(
        context: dg.AssetExecutionContext,
        config: config_class,  # type: ignore[valid-type]
        store: ArtifactStore,
        mlflow: MlflowTracker,
        realtext: RealTextSource,
    ) -> dg.MaterializeResult:
        return train_stage_asset(context, config, (store, mlflow, realtext), spec)

    return _stage


STAGE_ASSETS: dict[str, dg.AssetsDefinition] = {s.name: stage_asset(s) for s in STAGES}
