"""The Kubernetes deployment in docs/deploy/k8s/ is valid: the instance config passes Dagster's and
each part's own schema, it builds the run pod it describes, and the step executor's config
matches the executor's schema and the job's real step names. Needs the ``k8s`` extra, which
``dev`` includes."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster._config import process_config, resolve_to_config_type
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.ref import InstanceRef
from dagster_k8s import k8s_job_executor
from dagster_k8s.job import (
    DagsterK8sJobConfig,
    UserDefinedDagsterK8sConfig,
    construct_dagster_k8s_job,
)

DEPLOY = Path(__file__).resolve().parents[1] / "docs" / "deploy" / "k8s"
PG_ENV = {
    "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_PASSWORD": "not-a-real-password",
    "DAGSTER_PG_HOST": "postgres.naics-gemini",
    "DAGSTER_PG_DB": "dagster",
}
PARTS = (
    "storage_data",
    "run_launcher_data",
    "run_coordinator_data",
    "compute_logs_data",
    "local_artifact_storage_data",
    "scheduler_data",
)


def instance_parts(config: dict[str, Any], folder: Path) -> dict[str, dict[str, Any]]:
    """Each part's class name -> its processed config. What ``DagsterInstance.from_config`` does
    before it connects anything: ``InstanceRef.from_dir`` checks the instance schema, then each
    class checks its own config (env vars resolved), as ``ConfigurableClassData.rehydrate``."""
    (folder / "dagster.yaml").write_text(yaml.safe_dump(config))
    ref = InstanceRef.from_dir(str(folder))
    parts = {}
    for name in PARTS:
        data = getattr(ref, name)
        klass = getattr(importlib.import_module(data.module_name), data.class_name)
        result = process_config(resolve_to_config_type(klass.config_type()), data.config_dict)
        if not result.success:
            raise DagsterInvalidConfigError(f"{name} ({data.class_name})", result.errors, None)
        parts[data.class_name] = result.value
    return parts


def k8s_job(launcher: dict[str, Any], step_config: dict[str, Any] | None = None) -> Any:
    """The Kubernetes Job the launcher's config (plus a step's own config) describes, built by
    dagster-k8s's own constructor: every volume, mount, env source and resource goes through
    the kubernetes client's models, which refuse unknown keys."""
    fields = inspect.signature(DagsterK8sJobConfig.__new__).parameters
    settings = {k: v for k, v in launcher.items() if k in fields} | {"job_image": "naics:test"}
    user = launcher.get("run_k8s_config", {}) | (step_config or {})
    return construct_dagster_k8s_job(
        DagsterK8sJobConfig(**settings),
        args=["dagster", "api", "execute_run", "{}"],
        job_name="dagster-run-test",
        user_defined_k8s_config=UserDefinedDagsterK8sConfig.from_dict(user),
        component="run_worker",
    )


@pytest.fixture
def documented() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "dagster.yaml").read_text())


@pytest.fixture
def pg_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in PG_ENV.items():
        monkeypatch.setenv(name, value)


def test_the_k8s_instance_config_is_valid_and_builds_its_run_pod(
    documented: dict[str, Any], pg_env: None, tmp_path: Path
) -> None:
    parts = instance_parts(documented, tmp_path)
    assert {"DagsterPostgresStorage", "K8sRunLauncher", "QueuedRunCoordinator"} <= parts.keys()
    assert (
        parts["DagsterPostgresStorage"]["postgres_db"]["password"] == PG_ENV["DAGSTER_PG_PASSWORD"]
    )
    assert parts["QueuedRunCoordinator"]["tag_concurrency_limits"][0]["limit"] == 1

    pod = k8s_job(parts["K8sRunLauncher"]).spec.template.spec
    (container,) = pod.containers
    assert [v.persistent_volume_claim.claim_name for v in pod.volumes] == ["naics-gemini-shared"]
    assert [(m.name, m.mount_path) for m in container.volume_mounts] == [("shared", "/shared")]
    sources = {(s.config_map_ref or s.secret_ref).name for s in container.env_from}
    assert sources == {"naics-gemini-env", "naics-gemini-mlflow"}
    env = {e.name: e for e in container.env}
    assert env["DAGSTER_HOME"].value == "/opt/dagster/dagster_home"
    assert env["DAGSTER_PG_PASSWORD"].value_from.secret_key_ref.name == "naics-gemini-postgres"
    assert pod.service_account_name == "naics-gemini-runs"
    assert container.resources.requests == {"cpu": "250m", "memory": "1Gi"}


def break_launcher_key(config: dict[str, Any]) -> None:
    launcher = config["run_launcher"]["config"]
    launcher["instance_config_mapp"] = launcher.pop("instance_config_map")


def break_postgres_key(config: dict[str, Any]) -> None:
    config["storage"]["postgres"]["postgres_db"]["hostnme"] = "db"


def break_queue_limit(config: dict[str, Any]) -> None:
    config["run_queue"]["tag_concurrency_limits"][0]["limit"] = "one"


def break_storage_kind(config: dict[str, Any]) -> None:
    config["storage"]["postgresql"] = config["storage"].pop("postgres")


@pytest.mark.parametrize(
    "breakage", [break_launcher_key, break_postgres_key, break_queue_limit, break_storage_kind]
)
def test_a_broken_instance_config_is_refused(
    documented: dict[str, Any], pg_env: None, tmp_path: Path, breakage
) -> None:
    breakage(documented)
    with pytest.raises(DagsterInvalidConfigError):
        instance_parts(documented, tmp_path)


def test_a_misspelled_kubernetes_field_is_refused(
    documented: dict[str, Any], pg_env: None, tmp_path: Path
) -> None:
    """Volumes are free-form in Dagster's schema; the kubernetes models catch the typo."""
    volume = documented["run_launcher"]["config"]["volumes"][0]["persistentVolumeClaim"]
    volume["claimNme"] = volume.pop("claimName")
    parts = instance_parts(documented, tmp_path)
    with pytest.raises(Exception, match=r"Unexpected keys.*claimNme"):
        k8s_job(parts["K8sRunLauncher"])


def test_an_unset_database_password_names_its_variable(
    documented: dict[str, Any], pg_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DAGSTER_PG_PASSWORD")
    with pytest.raises(DagsterInvalidConfigError, match="DAGSTER_PG_PASSWORD"):
        instance_parts(documented, tmp_path)


def documented_executor() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "executor.yaml").read_text())


def executor_config(raw: dict[str, Any]) -> dict[str, Any]:
    """An executor config processed by k8s_job_executor's own schema."""
    result = process_config(k8s_job_executor.config_schema.config_type, raw)
    if not result.success:
        raise DagsterInvalidConfigError("k8s_job_executor", result.errors, raw)
    return result.value


def test_the_step_executor_config_fits_the_executor_and_the_job(
    documented: dict[str, Any], pg_env: None, tmp_path: Path
) -> None:
    import dagster as dg

    from naics_assets.definitions import defs

    config = executor_config(documented_executor())
    deployed = dg.Definitions(
        assets=defs.assets,
        jobs=defs.jobs,
        resources=defs.resources,
        executor=k8s_job_executor.configured(config),
    )
    job = deployed.resolve_job_def("naics_revision_job")
    assert job.executor_def.name == "k8s"
    steps = {
        op.name
        for name in ("naics_revision_job", "business_codes_job")
        for op in deployed.resolve_job_def(name).graph.iterate_op_defs()
    }
    assert set(config["per_step_k8s_config"]) <= steps, "a step named in executor.yaml is gone"
    assert {"naics_triplets", "stage_01_easy", "stage_03_hard", "code_part"} <= set(
        config["per_step_k8s_config"]
    )

    launcher = instance_parts(documented, tmp_path)["K8sRunLauncher"]
    # the stage's pod: the launcher's settings plus the step's own, as the step handler merges
    stage = k8s_job(launcher, config["per_step_k8s_config"]["stage_03_hard"]).spec.template.spec
    (container,) = stage.containers
    assert container.resources.requests == {"cpu": "8", "memory": "8Gi"}
    assert {e.name: e.value for e in container.env}["OMP_NUM_THREADS"] == "8"
    assert [m.mount_path for m in container.volume_mounts] == ["/shared"]


def test_a_broken_executor_config_is_refused() -> None:
    raw = documented_executor()
    raw["per_step_k8s_config"]["stage_03_hard"]["container_confg"] = {}
    with pytest.raises(DagsterInvalidConfigError):
        executor_config(raw)
