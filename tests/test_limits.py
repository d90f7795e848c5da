"""Limits the project keeps: servers in the docs bind to 127.0.0.1, partition keys and stage names
never build a path outside the artifact root, and no secret reaches MLflow, logs or the UI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from mlflow.tracking import MlflowClient

from naics_assets.assets.census import census_workbooks
from naics_assets.assets.stages import STAGE_ASSETS
from naics_assets.resources import ArtifactStore, CensusSource, RealTextSource
from naics_assets.tracking import MlflowTracker
from naics_ml.revision_folder import RevisionFolder
from naics_ml.stage import resolve_curriculum
from naics_ml.stage_table import stage_spec

REPO = Path(__file__).resolve().parents[1]

# --- documented servers bind to 127.0.0.1 -------------------------------------------------------

SERVER = re.compile(
    r"\b(dagster\s+dev|dagster-webserver|mlflow\s+ui|mlflow\s+server|mlflow\s+models\s+serve)\b"
)
BIND = re.compile(
    r"(?:-h|--host)\s+(['\"]?)127\.0\.0\.1\1(?![\w.])|--host=(['\"]?)127\.0\.0\.1\2(?![\w.])"
)
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE = re.compile(r"`([^`\n]+(?:\n[^`\n]+)?)`")  # a span may wrap once, as prose does


def code_snippets(text: str) -> list[tuple[int, str]]:
    """(line, code) for each logical line of a fenced block (backslash continuations joined)
    and each inline code span outside fences."""
    snippets: list[tuple[int, str]] = []
    prose: list[str] = []
    fenced, pending, start = False, "", 0
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
            prose.append("")
            continue
        if not fenced:
            prose.append(line)
            continue
        prose.append("")
        start = start or number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        snippets.append((start, pending + line))
        pending, start = "", 0
    joined = "\n".join(prose)
    for match in INLINE.finditer(joined):
        snippets.append((joined.count("\n", 0, match.start()) + 1, match.group(1)))
    return sorted(snippets)


def unbound_servers(text: str) -> list[tuple[int, str]]:
    """(line, command) of every server command in the code of a Markdown text that does not
    bind to 127.0.0.1; commands chained with && ; | & are judged one by one."""
    found = []
    for line, code in code_snippets(text):
        for command in re.split(r"&&|\|\||[;|&]", code.replace("\n", " ")):
            server = SERVER.search(command)
            if server and not BIND.search(command, server.end()):
                found.append((line, command.strip()))
    return found


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def test_every_documented_server_command_binds_to_localhost() -> None:
    commands = sum(
        len(SERVER.findall(code))
        for path in markdown_files()
        for _, code in code_snippets(path.read_text())
    )
    assert commands >= 3, f"only {commands} server commands found: the scan is broken"
    offenders = [
        f"{path.relative_to(REPO)}:{line}: {command}"
        for path in markdown_files()
        for line, command in unbound_servers(path.read_text())
    ]
    assert not offenders, "add -h/--host 127.0.0.1 to:\n" + "\n".join(offenders)


def test_the_docs_scan_flags_exactly_the_unbound_commands() -> None:
    text = "\n".join(
        [
            "Run `dagster dev -h 127.0.0.1` or `mlflow ui --port 5000`.",  # 1: second flagged
            "```bash",
            "mlflow models serve -m models:/m/1 \\",  # 3: continuation without a bind
            "  -p 5001 &",
            "dagster dev -h 127.0.0.1 && mlflow server --port 5000",  # 5: chained, flagged
            "dagster-webserver --host 0.0.0.0",  # 6
            "mlflow ui --host 127.0.0.10",  # 7: not the loopback address
            "mlflow ui --host=127.0.0.1 --port 5000",
            "mlflow models serve -m x -h '127.0.0.1' -p 1",
            "```",
            "In prose the span may wrap: `.venv/bin/mlflow",
            "ui --backend-store-uri sqlite:///x.db`.",  # 11: flagged
        ]
    )
    assert [line for line, _ in unbound_servers(text)] == [1, 3, 5, 6, 7, 11]


# --- partition keys and stage names stay under the artifact root ---------------------------------

BAD_KEYS = [
    "../2022",
    "2022/../../etc",
    "/etc",
    "20 22",
    "2022\x00",
    "..",
    ".",
    "",
    "2022/",
    "./2022",
    "2022\n",
    "..\\2022",
    "%2e%2e",
    "20\u0662\u0662",  # Arabic-Indic digits: \d accepts them
    "\uff12\uff10\uff12\uff12",  # full-width 2022
]
BAD_STAGES = [
    "../stage_01_easy",
    "stage_01_easy/../../x",
    "stage_01_easy/",
    "/stage_01_easy",
    "stage_01_easy\x00",
    "stage_01_easy\n",
    "..",
    "stage_\u0660\u0661_easy",
    "stage_1_easy",
]


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("key", BAD_KEYS)
def test_a_crafted_partition_key_builds_no_path(key: str, tmp_path: Path) -> None:
    store = ArtifactStore(root=str(tmp_path / "artifacts"))
    with pytest.raises(ValueError, match=re.escape(repr(key))):
        store.revision(key)
    with pytest.raises(ValueError, match=re.escape(repr(key))):
        RevisionFolder.under(tmp_path / "artifacts", key)
    for census in (CensusSource(local_dir=str(tmp_path / "census")), CensusSource()):
        with pytest.raises(ValueError, match=re.escape(repr(key))):
            census.revision_dir(key)
    assert tree(tmp_path) == []  # not even the root was created


@pytest.mark.parametrize("stage", BAD_STAGES)
def test_a_crafted_stage_name_builds_no_path(stage: str, tmp_path: Path) -> None:
    folder = RevisionFolder.under(tmp_path / "artifacts", "2022")
    with pytest.raises(ValueError, match=re.escape(repr(stage))):
        folder.stage(stage)
    assert tree(tmp_path) == []


def test_valid_keys_and_stages_stay_under_the_root(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    store = ArtifactStore(root=str(root))
    folder = store.revision("2022").stage("stage_03_hard").path
    assert folder == root / "2022" / "models" / "stage_03_hard"
    assert folder.resolve().is_relative_to(root.resolve()) and (root / "2022").is_dir()
    census = CensusSource(local_dir=str(tmp_path / "census")).revision_dir("2017")
    assert census == (tmp_path / "census" / "2017").resolve()


def test_an_object_store_url_as_root_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # Path("s3://b/x") would be the relative folder s3:/b/x
    store = ArtifactStore(root="s3://bucket/artifacts")
    with pytest.raises(ValueError, match=r"NAICS_ARTIFACTS_DIR.*'s3://bucket/artifacts'"):
        store.revision("2022")
    assert tree(tmp_path) == []


@pytest.mark.parametrize("name", ["../boston.csv", "/etc/passwd", "sub/x.csv", "..", "", "a\x00"])
def test_real_text_file_names_cannot_leave_their_folder(name: str, tmp_path: Path) -> None:
    (tmp_path / "texts").mkdir()
    for setting in ("eval_file", "val_file"):
        source = RealTextSource(local_dir=str(tmp_path / "texts"), **{setting: name})
        with pytest.raises(ValueError, match=f"RealTextSource.{setting}.*{re.escape(repr(name))}"):
            source.load(["111110"])


@pytest.mark.parametrize("setting", ["../../x", "/etc/passwd", "01_easy/../../x"])
def test_a_curriculum_name_is_a_packaged_name_or_a_yaml_path(setting: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(setting))):
        resolve_curriculum(setting, stage_spec("stage_01_easy"))


def test_a_crafted_partition_key_fails_the_asset_and_writes_nothing(tmp_path: Path) -> None:
    """Dagster accepts any dynamic partition key (UI, API): the resources are the guard."""
    instance = dg.DagsterInstance.ephemeral()
    resources = {
        "census": CensusSource(local_dir=str(tmp_path / "census")),
        "store": ArtifactStore(root=str(tmp_path / "root" / "artifacts")),
    }
    for key in ("../../escaped", "/tmp", "2022/../.."):
        instance.add_dynamic_partitions("naics_revision", [key])
        result = dg.materialize(
            [census_workbooks],
            partition_key=key,
            instance=instance,
            resources=resources,
            raise_on_error=False,
        )
        assert not result.success
        error = str(result.get_step_failure_events()[0].step_failure_data.error)
        assert (
            f"ValueError: NAICS revision must be a four-digit year like '2022', got {key!r}"
            in error
        )
    assert tree(tmp_path) == []


# --- no secret in MLflow params/tags, Dagster events or the UI -----------------------------------

SECRET_VARS = (
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
    "HF_TOKEN",
    "DAGSTER_PG_PASSWORD",
    "GITHUB_TOKEN",
)


def fake_secrets(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Credential-looking variables a deployment may carry; each value is unique."""
    values = []
    for name in SECRET_VARS:
        values.append(f"fake-{name.lower()}-{uuid.uuid4().hex}")
        monkeypatch.setenv(name, values[-1])
    return values


def write_codes(revision_dir: Path) -> None:
    """The code table ``stage_request`` reads; no index entries, so the stage stops in
    ``run_stage`` right after its params and tags went to MLflow."""
    revision_dir.mkdir(parents=True)
    pl.DataFrame(
        {"index": [0, 1, 2], "code": ["11", "111110", "111120"], "level": [2, 6, 6]}
    ).write_parquet(revision_dir / "naics_codes.parquet")


def materialize_stage(
    tmp_path: Path, tracker: MlflowTracker
) -> tuple[dg.ExecuteInProcessResult, str]:
    """The real ``stage_01_easy`` asset; its result and the text of every event it logged."""
    from dagster._serdes import serialize_value

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("naics_revision", ["2022"])
    result = dg.materialize(
        [STAGE_ASSETS["stage_01_easy"]],
        partition_key="2022",
        instance=instance,
        raise_on_error=False,
        resources={
            "store": ArtifactStore(root=str(tmp_path / "artifacts")),
            "mlflow": tracker,
            "realtext": RealTextSource(),
        },
    )
    events = "\n".join(serialize_value(entry) for entry in instance.all_logs(result.run_id))
    return result, events


def test_stage_params_and_tags_hold_no_secret_from_the_environment(
    tmp_path: Path, monkeypatch, capfd
) -> None:
    secrets = fake_secrets(monkeypatch)
    write_codes(tmp_path / "artifacts" / "2022")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result, events = materialize_stage(tmp_path, MlflowTracker(tracking_uri=uri))
    assert not result.success  # stopped in run_stage, after the params were logged
    error = result.get_step_failure_events()[0].step_failure_data.error
    assert "naics_index_entries.parquet" in str(error)

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("naics-gemini").experiment_id])
    params, tags = run.data.params, run.data.tags
    assert {"model.base_model", "train.steps", "curriculum.name"} <= params.keys()
    assert tags["dagster_run_id"] == result.run_id and tags["naics_revision"] == "2022"
    logged = json.dumps([params, tags])
    printed = "".join(capfd.readouterr())
    for secret in secrets:
        assert secret not in logged and secret not in printed and secret not in events


def test_a_tracking_uri_with_credentials_is_refused_before_any_request(
    tmp_path: Path, monkeypatch, capfd
) -> None:
    """MLflow prints its URI in run links (stdout, so Dagster's compute logs) and in request
    errors; a ``user:password@`` URI is refused, its password never shown."""
    secret = f"pw-{uuid.uuid4().hex}"
    uri = f"https://alice:{secret}@mlflow.invalid:5000"
    write_codes(tmp_path / "artifacts" / "2022")
    result, events = materialize_stage(tmp_path, MlflowTracker(tracking_uri=uri))
    assert not result.success
    error = str(result.get_step_failure_events()[0].step_failure_data.error)
    assert "MLFLOW_TRACKING_URI" in error and "https://***@mlflow.invalid:5000" in error
    assert secret not in events and secret not in "".join(capfd.readouterr())

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(ValueError, match="MLFLOW_TRACKING_USERNAME") as refused:
        MlflowTracker().uri()
    assert secret not in str(refused.value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example.com:5000")
    assert MlflowTracker().uri() == "https://mlflow.example.com:5000"


def test_the_code_location_snapshot_holds_no_environment_secret(tmp_path: Path) -> None:
    """What the UI shows and every run stores (job and resource snapshots) is built from the
    definitions; a tracking URI in the environment must not be copied into it."""
    secret = f"pw-{uuid.uuid4().hex}"
    script = (
        "from dagster._core.remote_representation.external_data import RepositorySnap\n"
        "from dagster._serdes import serialize_value\n"
        "from naics_assets.definitions import defs\n"
        "print(serialize_value(RepositorySnap.from_def(defs.get_repository_def())))\n"
    )
    env = os.environ | {
        "DAGSTER_HOME": str(tmp_path),
        "MLFLOW_TRACKING_URI": f"https://alice:{secret}@mlflow.invalid",
        "NAICS_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
    }
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "naics_revision_job" in done.stdout and str(tmp_path / "artifacts") in done.stdout
    assert secret not in done.stdout
