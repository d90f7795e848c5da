"""Which blend weights and which stage serve ``Classifier.predict``, as files next to the stages.

Each stage folder's ``blend.json`` holds the weights chosen on validation data
(:mod:`naics_ml.evaluation.blend_tuning`) and their ``selection_score``; the models folder's
``serving.json`` names the stage with the best score, the one ``predict`` serves: the CLI's
default (:func:`served_stage`) and the registered MLflow model both read it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from naics_ml.inference.entry_memory import MemoryConfig
from naics_ml.io import atomic_write_text
from naics_ml.revision_folder import RevisionFolder, revisions
from naics_ml.stage_folder import SERVING_FILE, StageFolder

__all__ = [
    "TunedBlend",
    "choose_served_stage",
    "load_blend",
    "newest_stage",
    "save_blend",
    "selection_scores",
    "served_stage",
    "served_stage_dir",
    "stage_digest",
]

SERVING_FILES = (  # what decides a stage's predictions; its digest names a registered version
    StageFolder.CHECKPOINT,
    StageFolder.CODES,
    StageFolder.MEMORY,
    StageFolder.BLEND,
    StageFolder.CALIBRATION,
    StageFolder.LEVELS,
)


@dataclasses.dataclass(frozen=True)
class TunedBlend:
    """The chosen weights, their validation score and every set's hit@1 under them."""

    config: MemoryConfig
    score: float
    per_set: dict[str, float]
    untuned_score: float  # the same objective under the defaults, for comparison


def save_blend(path: Path | str, tuned: TunedBlend) -> Path:
    """Write the stage's ``blend.json`` (weights, score, per-set hit@1), atomically."""
    target = StageFolder.of(path).blend
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
    file = StageFolder.of(path).blend
    if not file.is_file():
        return None
    return MemoryConfig(**json.loads(file.read_text())["memory_config"])


def selection_scores(revision: RevisionFolder, stages: Sequence[str]) -> dict[str, float]:
    """Each finished stage's validation ``selection_score`` (from its ``blend.json``)."""
    scores = {}
    for stage in stages:
        file = revision.stage(stage).blend
        if file.is_file():
            scores[stage] = float(json.loads(file.read_text())["selection_score"])
    return scores


def choose_served_stage(revision: RevisionFolder, stages: Sequence[str]) -> Path:
    """Pick the stage that serves ``predict``: the best validation ``selection_score``, ties to
    the later stage (more hierarchy). Records the choice in the revision's ``serving.json``."""
    scores = selection_scores(revision, stages)
    if not scores:
        raise FileNotFoundError(f"no stage under {revision.models} has a {StageFolder.BLEND}")
    best = max(reversed([s for s in stages if s in scores]), key=scores.__getitem__)
    payload = {"stage": best, "selection_scores": scores}
    atomic_write_text(revision.serving, json.dumps(payload, indent=1))
    return revision.stage(best).path


def served_stage_dir(revision: RevisionFolder) -> Path:
    """The stage folder recorded by :func:`choose_served_stage` (``serving.json``)."""
    if not revision.serving.is_file():
        raise FileNotFoundError(
            f"{revision.serving} does not exist: materialize naics_embeddings first"
        )
    return revision.stage(json.loads(revision.serving.read_text())["stage"]).path


def _candidates(artifacts: Path | str, revision: str | None) -> list[RevisionFolder]:
    """The folder of ``revision``, or of every revision under ``artifacts``, newest first."""
    names = [revision] if revision else revisions(artifacts)
    return [RevisionFolder.under(artifacts, name) for name in names]


def served_stage(artifacts: Path | str, revision: str | None = None) -> Path:
    """The stage folder that serves ``predict`` for ``revision`` (``<rev>/models/serving.json``),
    or for the newest revision that has one. The error says how to make one."""
    for folder in _candidates(artifacts, revision):
        if folder.serving.is_file():
            return served_stage_dir(folder)
    where = f"revision {revision}" if revision else f"any revision under {artifacts}"
    raise FileNotFoundError(
        f"no {SERVING_FILE} for {where}: materialize naics_embeddings (it records the stage "
        "chosen on validation) with: dagster asset materialize -m naics_assets.definitions "
        f"--select '*naics_embeddings' --partition {revision or '<YEAR>'}; "
        "or name a stage with --stage NAME or a folder with --model PATH"
    )


def stage_digest(stage_dir: Path | str) -> str:
    """SHA-256 over the files that decide a stage's predictions (``SERVING_FILES``, a missing
    one as empty): it names the registered version that holds them."""
    from naics_ml.inference.stage_points import stage_fingerprint

    return stage_fingerprint(stage_dir, SERVING_FILES)


def newest_stage(artifacts: Path | str, stage: str, revision: str | None = None) -> Path:
    """The finished ``stage`` folder of ``revision`` under ``artifacts`` (``<rev>/models/``),
    or of the newest revision that has one. The error says how to materialize one."""
    from naics_ml.training.checkpoint import is_complete

    for folder in _candidates(artifacts, revision):
        if is_complete(folder.stage(stage).path):
            return folder.stage(stage).path
    where = f"revision {revision}" if revision else f"any revision under {artifacts}"
    raise FileNotFoundError(
        f"no finished {stage} for {where}; materialize one with: dagster asset materialize "
        f"-m naics_assets.definitions --select '*{stage}' --partition {revision or '<YEAR>'}"
    )
