"""naics-gemini's library, one subpackage per pipeline stage, in the order data flows:

``data`` (Census workbooks -> code table, index split, tree distances, invariants, real text)
-> ``triplets`` (generation, shards, curricula, sampler) -> ``model`` (encoder, fusion, Lorentz
geometry, negative bank) -> ``training`` (loss, loop, checkpoints, data parallel) ->
``inference`` (Classifier, entry memory, stage points) -> ``evaluation`` (metrics, baselines,
the stage report). ``naics_ml.stage`` runs one stage end to end; ``naics_ml.stage_folder`` names
its files. See docs/architecture.md.

Importing the package is cheap: the public names below load their modules (and torch) on first
use.
"""

from importlib import import_module
from typing import Any

__all__ = ["Classifier", "ModelConfig", "Prediction", "TrainConfig"]

_HOMES = {
    "Classifier": "naics_ml.inference.classifier",
    "Prediction": "naics_ml.inference.classifier",
    "ModelConfig": "naics_ml.model.config",
    "TrainConfig": "naics_ml.training.config",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'naics_ml' has no attribute {name!r}")
