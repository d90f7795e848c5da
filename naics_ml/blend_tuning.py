"""Choose the Classifier's blend weights on validation data, per stage, and keep them with it.

``Classifier.predict`` mixes the trained embedding, the entry memory (as points and as words)
and the frozen base model's own vote (``naics_ml.entry_memory.MemoryConfig``). How much each
part should weigh depends on the stage: a stage fitted hard to the hierarchy needs more of the
base model's knowledge of free text. So every stage grid-searches the three weights on its
validation sets (the index ``validation`` split and the real-text validation set, never a test
or evaluation-only set), mixing parts computed once (``Classifier.score_parts``), and writes
the winner to ``blend.json`` in the stage folder; ``Classifier.from_checkpoint`` loads it.

The objective is the mean hit@1 over the validation sets, so that neither the index phrasing
nor the firm-written text is given up for the other. The same number ranks the stages
(``selection_score``): the stage that serves ``predict`` is chosen by validation.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from naics_ml.checkpoint import stage_folder
from naics_ml.entry_memory import MemoryConfig
from naics_ml.io import atomic_write_text
from naics_ml.realtext import realtext_metrics

BLEND_NAME = "blend.json"
SERVING_NAME = "serving.json"  # in the models folder: which stage serves predict
GRID = {
    "weight": (0.0, 0.15, 0.25, 0.35),
    "lexical_weight": (0.0, 0.1, 0.2),
    "base_weight": (0.0, 0.2, 0.35, 0.5, 0.65, 0.8),
}


@dataclasses.dataclass(frozen=True)
class TunedBlend:
    """The chosen weights, their validation score and every set's hit@1 under them."""

    config: MemoryConfig
    score: float
    per_set: dict[str, float]
    untuned_score: float  # the same objective under the defaults, for comparison


def tune_blend(
    parts: Mapping[str, object],
    truth: Mapping[str, Sequence[Sequence[str]]],
    candidates: Sequence[str] | np.ndarray,
    start: MemoryConfig = MemoryConfig(),
    grid: Mapping[str, Sequence[float]] = GRID,
) -> TunedBlend:
    """Grid-search ``grid`` (values per ``MemoryConfig`` weight) for the best mean hit@1 over
    the sets (``parts[name]`` are that set's ``naics_ml.classify.ScoreParts``, ``truth[name]``
    its true codes per text). Ties go to the earlier grid point (smaller weights); the other
    fields, temperatures included, stay those of ``start``."""
    if not parts:
        raise ValueError("tune_blend needs at least one validation set")

    def evaluate(config: MemoryConfig) -> dict[str, float]:
        return {
            name: realtext_metrics(p.mix(config), candidates, truth[name], "")["hit1"]
            for name, p in parts.items()
        }

    best: TunedBlend | None = None
    untuned = float(np.mean(list(evaluate(start).values())))
    for values in itertools.product(*grid.values()):
        weights = {**dataclasses.asdict(start), **dict(zip(grid, values, strict=True))}
        if weights["weight"] + weights["lexical_weight"] > 1.0:
            continue  # not a valid MemoryConfig
        config = MemoryConfig(**weights)
        per_set = evaluate(config)
        score = float(np.mean(list(per_set.values())))
        if best is None or score > best.score + 1e-12:
            best = TunedBlend(config, score, per_set, untuned)
    return best


def save_blend(path: Path | str, tuned: TunedBlend) -> Path:
    """Write the stage's ``blend.json`` (weights, score, per-set hit@1), atomically."""
    target = stage_folder(path) / BLEND_NAME
    payload = {
        "memory_config": dataclasses.asdict(tuned.config),
        "selection_score": tuned.score,
        "per_set_hit1": tuned.per_set,
        "untuned_score": tuned.untuned_score,
    }
    atomic_write_text(target, json.dumps(payload, indent=1))
    return target


def load_blend(path: Path | str) -> MemoryConfig | None:
    """The stage's tuned weights, or None when it has no ``blend.json``."""
    file = stage_folder(path) / BLEND_NAME
    if not file.is_file():
        return None
    return MemoryConfig(**json.loads(file.read_text())["memory_config"])


def selection_scores(models_dir: Path | str, stages: Sequence[str]) -> dict[str, float]:
    """Each finished stage's validation ``selection_score`` (from its ``blend.json``)."""
    scores = {}
    for stage in stages:
        file = Path(models_dir) / stage / BLEND_NAME
        if file.is_file():
            scores[stage] = float(json.loads(file.read_text())["selection_score"])
    return scores


def choose_served_stage(models_dir: Path | str, stages: Sequence[str]) -> Path:
    """Pick the stage that serves ``predict``: the best validation ``selection_score``, ties to
    the later stage (more hierarchy). Records the choice in ``models_dir/serving.json``."""
    scores = selection_scores(models_dir, stages)
    if not scores:
        raise FileNotFoundError(f"no stage under {models_dir} has a {BLEND_NAME}")
    best = max(reversed([s for s in stages if s in scores]), key=scores.__getitem__)
    payload = {"stage": best, "selection_scores": scores}
    atomic_write_text(Path(models_dir) / SERVING_NAME, json.dumps(payload, indent=1))
    return Path(models_dir) / best


def served_stage_dir(models_dir: Path | str) -> Path:
    """The stage folder recorded by :func:`choose_served_stage` (``serving.json``)."""
    file = Path(models_dir) / SERVING_NAME
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist: materialize naics_embeddings first")
    return Path(models_dir) / json.loads(file.read_text())["stage"]
