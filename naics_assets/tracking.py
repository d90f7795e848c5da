"""MLflow tracking for stage runs: one MLflow run per stage materialization.

The store defaults to a sqlite database under ``storage/mlflow/`` (MLflow 3's plain file store
refuses to start); ``MLFLOW_TRACKING_URI`` or the resource's ``tracking_uri`` override it.
mlflow is imported only when a run starts, so loading the code location stays fast.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
from pydantic import Field

from naics_assets.resources import project_root


def refuse_credentials(uri: str) -> str:
    """An HTTP(S) tracking URI without ``user:password@``: MLflow prints the URI in run links on
    stdout (Dagster's compute logs) and in request errors, so credentials go in its own
    variables, which it never prints."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https") and "@" in parts.netloc:
        host = parts.netloc.rsplit("@", 1)[1]
        raise ValueError(
            "MLFLOW_TRACKING_URI (MlflowTracker.tracking_uri) must not hold credentials, got "
            f"'{parts.scheme}://***@{host}'; set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead"
        )
    return uri


class StageRun:
    """A thin handle on one active MLflow run: params, step metrics, final metrics, artifacts."""

    def __init__(
        self, client: Any, run_id: str, experiment_id: str, link: str, uri: str = ""
    ) -> None:
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id
        self.link, self.uri = link, uri

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        batch = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for start in range(0, len(batch), 100):
            self.client.log_batch(self.run_id, params=batch[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, step or 0)
            for k, v in metrics.items()
            if isinstance(v, int | float) and math.isfinite(float(v))
        ]
        for start in range(0, len(batch), 500):
            self.client.log_batch(self.run_id, metrics=batch[start : start + 500])

    def log_artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def log_classifier_model(self, stage_dir: Path, tags: Mapping[str, str]) -> str:
        """The stage folder as a pyfunc model in this run, registered as a new version of
        ``naics-gemini-classifier`` (``naics_ml.inference.pyfunc``); returns the version."""
        from naics_ml.inference.pyfunc import log_classifier_model

        return log_classifier_model(stage_dir, self.uri, self.run_id, dict(tags))

    def register_served(self, stage_dir: Path, revision: str, tags: Mapping[str, str]) -> str:
        """Make the served stage of ``revision`` the registered model's alias
        ``served-<revision>``: a new version (logged in this run, which is that stage's) unless
        the alias already names one with this folder's ``stage_digest``. Returns the version."""
        from mlflow.exceptions import MlflowException

        from naics_ml.inference.pyfunc import REGISTERED_MODEL
        from naics_ml.inference.serving import stage_digest

        alias, digest = served_alias(revision), stage_digest(stage_dir)
        try:
            current = self.client.get_model_version_by_alias(REGISTERED_MODEL, alias)
        except MlflowException:
            current = None  # no model, or no such alias yet
        if current is not None and current.tags.get("stage_digest") == digest:
            return str(current.version)
        version = self.log_classifier_model(stage_dir, {**tags, "stage_digest": digest})
        self.client.set_registered_model_alias(REGISTERED_MODEL, alias, version)
        return version


def served_alias(revision: str) -> str:
    """The registered model's alias for the stage that serves ``revision``."""
    return f"served-{revision}"


class MlflowTracker(dg.ConfigurableResource):
    """Where stage runs are tracked, and the experiment they go to."""

    tracking_uri: str = Field(
        default="", description="Empty: MLFLOW_TRACKING_URI, else sqlite under storage/mlflow."
    )
    experiment: str = "naics-gemini"
    ui_url: str = Field(
        default="http://127.0.0.1:5000", description="Base URL of `mlflow ui`, for run links."
    )

    def uri(self) -> str:
        if self.tracking_uri:
            return refuse_credentials(self.tracking_uri)
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return refuse_credentials(os.environ["MLFLOW_TRACKING_URI"])
        folder = project_root() / "storage" / "mlflow"
        folder.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{folder / 'mlflow.db'}"

    def _experiment_id(self, client: Any) -> str:
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        artifacts = None
        if self.uri().startswith("sqlite:///"):
            artifacts = (Path(self.uri()[len("sqlite:///") :]).parent / "artifacts").as_uri()
        return client.create_experiment(self.experiment, artifact_location=artifacts)

    def existing_run(self, run_id: str) -> StageRun:
        """A handle on a run already made (``naics_embeddings`` adds its picture and level
        metrics to the ``stage_03_hard`` run it was built from)."""
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.uri())
        experiment_id = client.get_run(run_id).info.experiment_id
        link = f"{self.ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
        return StageRun(client, run_id, experiment_id, link, self.uri())

    def close_interrupted_runs(self, run_name: str, artifacts_dir: str) -> list[str]:
        """Mark KILLED the runs named ``run_name`` for ``artifacts_dir`` still RUNNING: a killed
        process cannot end its run. Only call it holding the stage's lock, when no live process
        can own such a run. Returns their ids."""
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.uri())
        found = client.get_experiment_by_name(self.experiment)
        if found is None:
            return []
        name = run_name.replace("'", "")
        query = f"attributes.run_name = '{name}' and attributes.status = 'RUNNING'"
        runs = client.search_runs([found.experiment_id], filter_string=query)
        stale = [r.info.run_id for r in runs if r.data.tags.get("artifacts_dir") == artifacts_dir]
        for run_id in stale:
            client.set_terminated(run_id, status="KILLED")
        return stale

    @contextmanager
    def start_run(self, run_name: str, tags: Mapping[str, str]) -> Iterator[StageRun]:
        """Open a run; it ends FINISHED, or FAILED when the body raises."""
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.uri())
        experiment_id = self._experiment_id(client)
        run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
        run_id = run.info.run_id
        link = f"{self.ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
        try:
            yield StageRun(client, run_id, experiment_id, link, self.uri())
        except BaseException:
            client.set_terminated(run_id, status="FAILED")
            raise
        client.set_terminated(run_id, status="FINISHED")
