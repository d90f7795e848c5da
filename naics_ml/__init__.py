"""naics-gemini's library: Census parsing, taxonomy, triplets, model, training, evaluation.

Importing the package is cheap; ``naics_ml.Classifier`` loads torch and the model code on
first use.
"""

from typing import Any

__all__ = ["Classifier", "Prediction"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from naics_ml import classify

        return getattr(classify, name)
    raise AttributeError(f"module 'naics_ml' has no attribute {name!r}")
