"""A Classifier rebuilt from a stage folder: the model from its checkpoint, the code table,
the entry memory, the blend and calibration the stage chose, its saved points and level heads
(``Classifier.from_checkpoint``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from naics_ml.inference.calibration import load_calibration
from naics_ml.inference.entry_memory import MemoryConfig, load_stage_memory
from naics_ml.inference.level_heads import load_level_heads
from naics_ml.inference.serving import load_blend
from naics_ml.inference.stage_points import load_stage_points
from naics_ml.model.config import ModelConfig
from naics_ml.model.device import resolve_device
from naics_ml.model.network import NaicsModel
from naics_ml.model.precision import resolve_precision
from naics_ml.training.checkpoint import load_checkpoint, load_stage_codes, resolve_checkpoint

__all__ = ["LoadOptions", "load_classifier"]

C = TypeVar("C")  # the Classifier class (not imported here: it imports this module)


@dataclass(frozen=True)
class LoadOptions:
    """How a stage is rebuilt.

    ``base_model`` overrides the config's base model name/path; ``base``/``tokenizer`` objects
    are used as-is (tests). An unfinished stage is refused unless ``allow_incomplete``.
    ``memory=False`` ignores the stage's ``memory.parquet``. The stage's ``blend.json``
    (``naics_ml.evaluation.blend_tuning``) gives the blend weights unless ``memory_config`` is
    passed. The stage's ``points.pt`` (``naics_ml.inference.stage_points``) spares embedding the
    codes and the memory again while it matches the stage's files; ``reuse_points=False``
    embeds afresh. ``precision`` (``naics_ml.model.precision``): ``float32`` (the stage's own
    evaluation), ``bfloat16`` or ``auto`` for the texts to classify (the saved points stay as
    the stage computed them; with bfloat16 the frozen layers are then stored in it,
    ``ChannelEncoder.store_frozen_weights``). ``device`` (``naics_ml.model.device``): where the
    model and the points live; ``auto`` is CUDA, else Apple MPS, else the CPU.
    """

    base_model: str | None = None
    base: Any = None
    tokenizer: Any = None
    allow_incomplete: bool = False
    memory: bool = True
    memory_config: MemoryConfig | None = None
    reuse_points: bool = True
    precision: str = "float32"
    device: str = "auto"


def load_classifier(cls: type[C], path: Path | str, options: LoadOptions = LoadOptions()) -> C:
    """The Classifier (``cls``, ``naics_ml.inference.classifier.Classifier``) of a stage folder
    or its checkpoint file."""
    where = resolve_device(options.device)  # before any loading: a missing GPU fails at once
    file = resolve_checkpoint(path)
    state = load_checkpoint(file)
    if not state.get("complete", False) and not options.allow_incomplete:
        raise ValueError(
            f"{file} is an unfinished stage (step {state.get('step')}); "
            "pass allow_incomplete=True to use it anyway"
        )
    config = ModelConfig.from_dict(state["model_config"])
    if options.base_model is not None:
        config = dataclasses.replace(config, base_model=options.base_model)
    model = NaicsModel(config, base=options.base, tokenizer=options.tokenizer)
    model.load_trainable_state_dict(state["model_state"])
    model.to(where)
    model.encoder.layer_dtype = resolve_precision(options.precision, where.type)
    memory_config = options.memory_config or load_blend(file)  # the weights the stage chose
    # the level heads only where the blend weighs them: otherwise they are work for nothing
    uses_levels = memory_config is not None and any(memory_config.level_weights)
    classifier = cls(
        model,
        load_stage_codes(file),
        float(state.get("train_config", {}).get("temperature", 0.1)),
        memory=load_stage_memory(file) if options.memory else None,
        memory_config=memory_config,
        points=load_stage_points(file) if options.reuse_points else None,
        calibration=load_calibration(file),
        level_heads=load_level_heads(file) if uses_levels else None,
    )
    if model.encoder.layer_dtype is not None:  # this model only classifies from now on
        model.encoder.store_frozen_weights(model.encoder.layer_dtype)
    return classifier
