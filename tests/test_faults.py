"""Faults: killed runs, corrupt inputs, bad settings, concurrent runs and full disks.

Each test provokes one fault with real processes and real files (the two-sector slice of the
2022 workbooks, the tiny BERT of ``tests/tiny.py``) and checks that the error names what is at
fault and that nothing already materialized is damaged: every file under its final name loads,
and what a failed run must not touch stays byte-identical.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import openpyxl
import polars as pl
import pytest
import torch
import yaml

from naics_assets.assets.census import census_workbooks
from naics_assets.assets.codes import naics_codes, naics_index_entries
from naics_assets.assets.distances import naics_distances
from naics_assets.assets.stages import STAGE_ASSETS
from naics_assets.assets.triplets import naics_triplets
from naics_assets.partitions import revision_partitions
from naics_assets.resources import ArtifactStore, CensusSource, RealTextSource
from naics_assets.tracking import MlflowTracker
from naics_ml.data.census import WorkbookSpec, read_census, read_workbook, workbook_specs
from naics_ml.data.download import fetch_workbooks
from naics_ml.io import (
    DiskFullError,
    LockHeldError,
    atomic_save_torch,
    exclusive_lock,
    write_parquet_atomic,
)

from .conftest import metadata_of
from .fault_child import write_all
from .pipeline import error_text
from .tiny import save_tiny_bert

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SPECS = workbook_specs("2022")
DATA_ASSETS = [census_workbooks, naics_index_entries, naics_codes, naics_distances, naics_triplets]
TRIPLETS_CONFIG = {"naics_triplets": {"config": {"cross_sector_k": 4, "workers": 1}}}
STEPS = 10  # checkpoints at steps 2, 4, ...: room to stop it after the first one


# ------------------------------------------------------------------------------ helpers
def hashes(folder: Path, final_only: bool = False) -> dict[str, str]:
    """SHA-256 of every file below ``folder`` but the lock files (they are not artifacts), or
    only of the files under their final names."""
    files = final_files(folder) if final_only else sorted(folder.rglob("*"))
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in files
        if p.is_file() and ".locks" not in p.parts
    }


def final_files(folder: Path) -> list[Path]:
    """Files under their final names: nothing hidden (temporary files, staging folders)."""
    return [
        p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]


def load_any(path: Path) -> None:
    """Read ``path`` fully with the reader its kind needs; a torn file raises."""
    if path.suffix == ".pt":
        torch.load(path, map_location="cpu", weights_only=True)
    elif path.suffix == ".parquet":
        pl.read_parquet(path)
    elif path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".yaml":
        yaml.safe_load(path.read_text())
    elif path.suffix == ".xlsx":
        (spec,) = [s for s in SPECS.values() if s.file_name == path.name]
        read_workbook(path, spec)
    elif path.suffix == ".png":
        assert path.read_bytes().endswith(b"IEND\xaeB`\x82"), f"{path}: truncated PNG"
    else:
        raise AssertionError(f"unexpected file {path}")


def assert_every_file_loads(folder: Path) -> None:
    for path in final_files(folder):
        try:
            load_any(path)
        except Exception as error:  # any reader error: a torn file
            raise AssertionError(f"{path} does not load: {error}") from error


def set_cell(path: Path, spec: WorkbookSpec, row: int, column: str, value: object) -> None:
    """Rewrite one cell of a workbook (``column``: our name; row 1 is the header)."""
    book = openpyxl.load_workbook(path)
    sheet = book[spec.sheet]
    header = [cell.value for cell in sheet[1]]
    # (``sheet.cell(..., value=None)`` would leave the cell as it is)
    sheet.cell(row=row, column=header.index(spec.columns.get(column, column)) + 1).value = value
    book.save(path)


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def site(slice_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A DAGSTER_HOME with the 2022 partition and the five data assets of the slice materialized
    in it, an artifacts folder and the tiny BERT on disk: what a CLI run of a stage needs."""
    root = tmp_path_factory.mktemp("faults")
    site = {
        "root": root,
        "home": root / "home",
        "artifacts": root / "artifacts",
        "census": slice_root,
        "bert": save_tiny_bert(root / "tiny-bert"),
    }
    site["home"].mkdir()
    (root / "mlflow").mkdir()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DAGSTER_HOME", str(site["home"]))
        with dg.DagsterInstance.get() as instance:
            instance.add_dynamic_partitions(revision_partitions.name, ["2022"])
            result = dg.materialize(
                DATA_ASSETS,
                partition_key="2022",
                resources=data_resources(slice_root, site["artifacts"]),
                instance=instance,
                run_config={"ops": TRIPLETS_CONFIG},
                raise_on_error=False,
            )
    assert result.success, error_text(result)
    return site


def data_resources(census: Path, artifacts: Path) -> dict[str, object]:
    return {
        "census": CensusSource(local_dir=str(census)),
        "store": ArtifactStore(root=str(artifacts)),
    }


@pytest.fixture
def ephemeral_instance() -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(revision_partitions.name, ["2022"])
        yield instance


def stage_settings(bert: Path, **changes: object) -> dict:
    """Small, fast stage_01_easy settings: a checkpoint every 2 steps, the tiny BERT."""
    config = {
        "steps": STEPS,
        "batch_size": 4,
        "query_batch_size": 4,
        "warmup_steps": 1,
        "checkpoint_every": 2,
        "validation_every": 100,
        "log_every": 1,
        "hierarchy_pairs": 64,
        "model": {"base_model": str(bert), "embedding_dim": 8, "lora_layers": 1, "lora_r": 4},
    }
    model = changes.pop("model", {})
    config = config | changes
    config["model"] = config["model"] | model
    return {"ops": {"stage_01_easy": {"config": config}}}


# ------------------------------------------------------------------------------ 1 + 4: killed
#                                                                 and concurrent stage runs
def cli_env(site: dict[str, Path]) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("NAICS_", "DAGSTER_"))}
    return keep | {
        "PYTHONPATH": str(PROJECT),
        "DAGSTER_HOME": str(site["home"]),
        "NAICS_ARTIFACTS_DIR": str(site["artifacts"]),
        "NAICS_CENSUS_DIR": str(site["census"]),
        "MLFLOW_TRACKING_URI": f"sqlite:///{site['root'] / 'mlflow' / 'mlflow.db'}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "DAGSTER_DISABLE_TELEMETRY": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def materialize_stage(site: dict[str, Path], log: Path) -> subprocess.Popen:
    """``dagster asset materialize`` of stage_01_easy for 2022, in its own process group."""
    command = [str(BIN / "dagster"), "asset", "materialize", "-m", "naics_assets.definitions"]
    command += ["--select", "stage_01_easy", "--partition", "2022"]
    command += ["--config-json", json.dumps(stage_settings(site["bert"]))]
    with log.open("wb") as out:
        return subprocess.Popen(
            command,
            cwd=PROJECT,
            env=cli_env(site),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for(predicate, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, f"exited early:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)


def finish(process: subprocess.Popen, log: Path, timeout: float) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        tail = log.read_text()[-3000:]
        raise AssertionError(f"still running after {timeout}s:\n{tail}") from None


def test_killed_stage_resumes_and_a_second_run_is_turned_away(
    site: dict[str, Path], tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    from naics_ml.inference.classifier import Classifier
    from naics_ml.training.checkpoint import load_checkpoint

    folder = site["artifacts"] / "2022/models/stage_01_easy"
    checkpoint = folder / "checkpoint.pt"
    first = materialize_stage(site, tmp_path / "first.log")
    try:
        wait_for(checkpoint.is_file, first, tmp_path / "first.log", timeout=180)
        os.killpg(first.pid, signal.SIGSTOP)  # frozen mid-training, holding the stage's lock
        before = hashes(site["artifacts"])
        second = materialize_stage(site, tmp_path / "second.log")
        assert finish(second, tmp_path / "second.log", timeout=180) != 0
        message = (tmp_path / "second.log").read_text()
        lock = site["artifacts"] / ".locks/2022/stage_01_easy.lock"
        assert f"{lock} is held by pid " in message, message[-3000:]
        holder = int(message.split(f"{lock} is held by pid ")[1].split()[0])
        assert os.getpgid(holder) == first.pid  # the frozen first run, named
        assert hashes(site["artifacts"]) == before  # the turned-away run wrote nothing
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    killed = load_checkpoint(checkpoint)
    assert not killed["complete"] and 2 <= killed["step"] < STEPS
    assert_every_file_loads(site["artifacts"])

    third = materialize_stage(site, tmp_path / "third.log")
    assert finish(third, tmp_path / "third.log", timeout=300) == 0
    done = load_checkpoint(checkpoint)
    assert done["complete"] and done["step"] == STEPS
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DAGSTER_HOME", str(site["home"]))
        with dg.DagsterInstance.get() as instance:
            key = STAGE_ASSETS["stage_01_easy"].key
            records = instance.fetch_materializations(key, limit=1).records
            runs = {r.run_id: r.status for r in instance.get_runs()}
            failures = [
                e.message
                for run_id in runs
                for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
            ]
    # the killed CLI could not end its run: the third run, taking the lock it left, did
    assert dg.DagsterRunStatus.STARTED not in runs.values(), runs
    assert sum("killed: its step died holding stage_01_easy's lock" in m for m in failures) == 1
    meta = records[0].asset_materialization.metadata
    assert meta["resumed_from_step"].value == killed["step"]
    client = MlflowClient(cli_env(site)["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("naics-gemini")
    runs = {r.info.run_id: r for r in client.search_runs([experiment.experiment_id])}
    resumed = runs[meta["mlflow_run_id"].value]
    steps = [m.step for m in client.get_metric_history(resumed.info.run_id, "loss")]
    assert steps == list(range(killed["step"] + 1, STEPS + 1))  # the count continued
    assert sorted(r.info.status for r in runs.values()) == ["FINISHED", "KILLED"]
    assert_every_file_loads(site["artifacts"])
    [predictions] = Classifier.from_checkpoint(folder).predict(["electric power plant"], top_k=3)
    assert len(predictions) == 3 and all(p.code[:2] in {"22", "55"} for p in predictions)


def child(*args: str, stdout: int | None = subprocess.PIPE) -> subprocess.Popen:
    """``python -m tests.fault_child ARGS`` with this checkout importable."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.fault_child", *args],
        cwd=PROJECT,
        env=os.environ | {"PYTHONPATH": str(PROJECT)},
        stdout=stdout,
    )


def test_a_lock_names_its_holder_and_dies_with_it(tmp_path: Path) -> None:
    """``exclusive_lock`` across real processes: refused while held, free once the holder is
    SIGKILLed (the kernel drops an flock with its process: no stale lock to clean up)."""
    lock = tmp_path / "locks" / "stage.lock"
    holder = child("hold", str(lock))
    try:
        assert holder.stdout.readline().strip() == b"held"
        with pytest.raises(LockHeldError) as refused, exclusive_lock(lock, "second"):
            pass
        assert str(lock) in str(refused.value) and f"pid {holder.pid}" in str(refused.value)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    abandoned: list[str] = []
    with exclusive_lock(lock, "third", on_abandoned=abandoned.append) as held:
        assert held.read_text() == "third"
    assert abandoned == [f"pid {holder.pid} (test holder)"]  # the killed holder's name, once
    assert lock.read_text() == ""  # released: no holder named
    with exclusive_lock(lock, "fourth", on_abandoned=abandoned.append):
        pass
    assert len(abandoned) == 1  # released normally: nothing abandoned


# ------------------------------------------------------------------------------ 1: torn files
def assert_whole(out: Path, census: Path) -> None:
    """Every file of the writer's folder is one complete version of itself."""
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert bool((state["weights"] == state["version"]).all())
    table = pl.read_parquet(out / "table.parquet")
    assert table.height == 300_000 and table["version"].n_unique() == 1
    assert len(json.loads((out / "stage.json").read_text())["pad"]) == 200_000
    for spec in SPECS.values():
        copied = (out / "census" / spec.file_name).read_bytes()
        assert copied == (census / spec.file_name).read_bytes(), spec.file_name
    read_census(out / "census", "2022")


def hidden_entries(*folders: Path) -> list[str]:
    return sorted(p.name for folder in folders for p in folder.iterdir() if p.name.startswith("."))


def test_sigkill_at_random_points_never_exposes_a_torn_file(
    slice_root: Path, tmp_path: Path
) -> None:
    out, census = tmp_path / "out", slice_root / "2022"
    write_all(out, census, 0)
    delays = [round(random.uniform(0.05, 2.0), 2) for _ in range(4)]
    for round_, delay in enumerate(delays, start=1):
        writer = child("write", str(out), str(census), str(1000 * round_))
        assert writer.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        writer.kill()
        assert writer.wait(timeout=30) == -signal.SIGKILL
        assert_whole(out, census)  # whichever version, never half of one
    # the next write of each file removes what the killed writers left behind
    write_all(out, census, 999)
    assert_whole(out, census)
    assert hidden_entries(out, out / "census") == [], f"left by kills at {delays} s"


def test_sigkill_between_write_and_rename_keeps_the_previous_file(
    slice_root: Path, tmp_path: Path
) -> None:
    path = tmp_path / "stage" / "checkpoint.pt"
    atomic_save_torch({"version": 1, "weights": torch.full((1000,), 1.0)}, path)
    before = path.read_bytes()
    killed = child("die-at-rename", "checkpoint", str(path), stdout=None)
    assert killed.wait(timeout=120) == -signal.SIGKILL
    assert path.read_bytes() == before
    (orphan,) = [p for p in path.parent.iterdir() if p.name != path.name]
    assert orphan.name.startswith(f".checkpoint.{killed.pid}-")
    assert torch.load(orphan, weights_only=True)["version"] == 2  # complete, never renamed
    atomic_save_torch({"version": 3, "weights": torch.full((1000,), 3.0)}, path)
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]  # orphan removed

    dest = tmp_path / "census"
    fetch_workbooks("2022", dest, local_dir=slice_root / "2022")
    before = hashes(dest)
    newer = tmp_path / "newer"
    shutil.copytree(slice_root / "2022", newer)
    set_cell(newer / SPECS["codes"].file_name, SPECS["codes"], 3, "title", "Renamed Utilities")
    old_set = dest.resolve()
    killed = child("die-at-rename", "census", str(dest), str(newer), stdout=None)
    assert killed.wait(timeout=120) == -signal.SIGKILL
    assert hashes(dest, final_only=True) == before  # all four old workbooks, none of the new
    assert dest.resolve() == old_set
    (link,) = hidden_entries(tmp_path)  # killed where the link to the new set would replace it
    assert link.startswith(f".census.{killed.pid}-") and link.endswith(".link")
    (new_set,) = [p for p in tmp_path.glob("census-*") if p != old_set]
    read_census(new_set, "2022")  # complete and validated, just not linked
    fetch_workbooks("2022", dest, local_dir=newer)
    assert hidden_entries(tmp_path) == [] and dest.resolve() == new_set
    assert sorted(tmp_path.glob("census-*")) == [new_set]  # the old set removed after the switch


# ------------------------------------------------------------------------------ 2: corrupt input
def html_page(path: Path) -> None:
    path.write_text("<!DOCTYPE html><html><body><h1>503 Service Unavailable</h1></body></html>")


def truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CORRUPTIONS = {
    "an HTML page": ("descriptions", html_page, ["is an HTML/XML page"]),
    "a truncated zip": ("index", truncated, ["truncated or corrupt xlsx"]),
    "a renamed column": (
        "descriptions",
        lambda p: set_cell(p, SPECS["descriptions"], 1, "description", "Descriptions"),
        ["sheet '2022_NAICS_Descriptions': missing column(s) ['Description']"],
    ),
    "a cross-reference of an unknown code": (
        "cross_references",
        lambda p: set_cell(p, SPECS["cross_references"], 2, "code", 999999),
        ["unknown code '999999'"],
    ),
    "an index row without a code": (
        "index",
        lambda p: set_cell(p, SPECS["index"], 3, "code", None),
        ["1 row(s) with text but no code in column 'NAICS22' (spreadsheet row(s) 3)"],
    ),
}


@pytest.mark.parametrize("fault", list(CORRUPTIONS))
def test_a_corrupt_workbook_fails_and_leaves_the_last_materialization_alone(
    fault: str, site: dict[str, Path], tmp_path: Path, ephemeral_instance
) -> None:
    role, corrupt, expected = CORRUPTIONS[fault]
    broken = tmp_path / "census"
    shutil.copytree(site["census"], broken)
    corrupt(broken / "2022" / SPECS[role].file_name)
    before = hashes(site["artifacts"])
    result = dg.materialize(
        [census_workbooks, naics_index_entries, naics_codes],
        partition_key="2022",
        resources=data_resources(broken, site["artifacts"]),
        instance=ephemeral_instance,
        raise_on_error=False,
    )
    assert not result.success
    (failed,) = result.get_step_failure_events()
    assert failed.step_key == "census_workbooks"  # before any file is replaced
    message = error_text(result)
    assert SPECS[role].file_name in message
    assert all(text in message for text in expected), message
    assert hashes(site["artifacts"]) == before
    assert_every_file_loads(site["artifacts"])
    read_census(site["artifacts"] / "2022" / "census", "2022")


def test_a_cross_reference_to_a_missing_code_is_counted_and_reported(
    slice_root: Path, tmp_path: Path, ephemeral_instance
) -> None:
    from naics_ml.data.codes import unresolved_references

    census = tmp_path / "census"
    shutil.copytree(slice_root, census)
    spec = SPECS["cross_references"]
    # the slice's cross-references name codes of the sectors it left out: 26 links, all dropped
    # silently before they were counted; the first row now names a code of no sector at all
    clean = unresolved_references(read_census(slice_root / "2022", "2022"))
    owner = read_workbook(census / "2022" / spec.file_name, spec)["code"][0]
    line = "Widget making--are classified in U.S. Industry 999999, Widget Making."
    set_cell(census / "2022" / spec.file_name, spec, 2, "text", line)
    result = dg.materialize(
        [census_workbooks, naics_index_entries, naics_codes],
        partition_key="2022",
        resources=data_resources(census, tmp_path / "artifacts"),
        instance=ephemeral_instance,
        raise_on_error=False,
    )
    assert result.success, error_text(result)
    meta = metadata_of(result, "naics_codes")
    first_row = read_workbook(slice_root / "2022" / spec.file_name, spec)["text"][0]
    replaced = [pair for pair in clean if pair[0] == owner and pair[1] in first_row]
    assert len(clean) == 26
    assert meta["unresolved_cross_references"] == len(clean) - len(replaced) + 1
    assert meta["unresolved_examples"].startswith(f"{owner}->999999")
    codes = pl.read_parquet(tmp_path / "artifacts/2022/naics_codes.parquet")
    row = codes.row(by_predicate=pl.col("code") == owner, named=True)
    assert line in row["excluded"] and "999999" not in row["excluded_codes"]


# ------------------------------------------------------------------------------ 3: bad settings
def curriculum_file(folder: Path, **changes: object) -> str:
    from naics_ml.triplets.curriculum import packaged_curriculum_path

    data = yaml.safe_load(packaged_curriculum_path("01_easy").read_text()) | changes
    path = folder / "my_curriculum.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


BAD_SETTINGS = {
    "a curriculum with an unknown key": lambda d: (
        {"curriculum": curriculum_file(d, negative_bucket={1: 1.0})},
        ["my_curriculum.yaml: unknown key(s) negative_bucket"],
    ),
    "curriculum shares summing to 0.9": lambda d: (
        {"curriculum": curriculum_file(d, negative_buckets={1: 0.5, 2: 0.4})},
        ["my_curriculum.yaml: negative_buckets: shares sum to 0.9"],
    ),
    "a negative learning rate": lambda d: (
        {"learning_rate": -1e-4},
        ["TrainConfig.learning_rate must be > 0, got -0.0001"],
    ),
    "a base model path that does not exist": lambda d: (
        {"model": {"base_model": str(d / "no-such-bert")}},
        [f"ModelConfig.base_model '{d / 'no-such-bert'}': no such file or folder"],
    ),
    "zero steps": lambda d: ({"steps": 0}, ["TrainConfig.steps must be >= 1, got 0"]),
}


@pytest.mark.parametrize("fault", list(BAD_SETTINGS))
def test_a_bad_setting_is_rejected_before_any_work(
    fault: str, site: dict[str, Path], tmp_path: Path, ephemeral_instance
) -> None:
    changes, expected = BAD_SETTINGS[fault](tmp_path)
    tracking = tmp_path / "mlflow.db"
    before = hashes(site["artifacts"])
    result = dg.materialize(
        [STAGE_ASSETS["stage_01_easy"]],
        partition_key="2022",
        resources={
            "store": ArtifactStore(root=str(site["artifacts"])),
            "mlflow": MlflowTracker(tracking_uri=f"sqlite:///{tracking}"),
            "realtext": RealTextSource(),
        },
        run_config=stage_settings(site["bert"], **changes),
        instance=ephemeral_instance,
        raise_on_error=False,
    )
    assert not result.success
    message = error_text(result)
    assert all(text in message for text in expected), message
    # no MLflow run was opened (it opens before the data, the base model or the training)
    assert not tracking.exists()
    assert hashes(site["artifacts"]) == before


# ------------------------------------------------------------------------------ 5: disk full
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (root only; elsewhere the test says why it cannot run)."""
    folder = tmp_path / "small"
    folder.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)],
            capture_output=True,
            timeout=30,
        )
    except FileNotFoundError as error:
        pytest.skip(f"no mount command to make a small file system: {error}")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 4 MiB tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], timeout=30, check=True)


def fill(folder: Path, leave: int) -> None:
    stats = os.statvfs(folder)
    (folder / "filler").write_bytes(bytes(stats.f_bavail * stats.f_frsize - leave))


def test_a_full_disk_while_checkpointing_names_the_file_and_keeps_the_old_one(
    small_disk: Path,
) -> None:
    from naics_ml.training.checkpoint import load_checkpoint, save_checkpoint

    path = small_disk / "models" / "checkpoint.pt"
    save_checkpoint({"step": 2, "weights": torch.zeros(1000)}, path)
    before = path.read_bytes()
    with pytest.raises(DiskFullError) as full:  # 8 MB does not fit in 4 MiB
        save_checkpoint({"step": 4, "weights": torch.zeros(2_000_000)}, path)
    assert full.value.errno == errno.ENOSPC and str(path) in str(full.value)
    assert path.read_bytes() == before and load_checkpoint(path)["step"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]


def test_a_full_disk_while_writing_shards_names_the_folder_and_keeps_the_old_ones(
    small_disk: Path, slice_root: Path
) -> None:
    from naics_ml.data.codes import load_code_table
    from naics_ml.triplets.generate import TripletConfig
    from naics_ml.triplets.shards import build_triplet_shards

    codes = load_code_table(slice_root / "2022", "2022")
    triplets = small_disk / "triplets"
    build_triplet_shards(codes, triplets, TripletConfig(cross_sector_k=4), workers=1)
    before = hashes(triplets)
    fill(small_disk, leave=8192)
    with pytest.raises(DiskFullError) as full:
        build_triplet_shards(codes, triplets, TripletConfig(cross_sector_k=2), workers=1)
    assert full.value.errno == errno.ENOSPC and str(triplets) in str(full.value)
    assert hashes(triplets) == before and hidden_entries(triplets) == []
    pl.read_parquet(triplets / "sector=*" / "*.parquet")


def test_no_space_reported_by_fsync_names_the_file_and_keeps_the_old_one(
    slice_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Network and delayed-allocation file systems report a full disk at fsync, after every
    write succeeded: the lowest call our writers make."""
    table = tmp_path / "naics_codes.parquet"
    write_parquet_atomic(pl.DataFrame({"code": ["22"]}), table)
    census = tmp_path / "census"
    fetch_workbooks("2022", census, local_dir=slice_root / "2022")
    before = hashes(tmp_path)

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(DiskFullError, match=f"writing {table}"):
        write_parquet_atomic(pl.DataFrame({"code": ["22", "55"]}), table)
    with pytest.raises(DiskFullError, match="no space left on the device writing"):
        fetch_workbooks("2022", census, local_dir=slice_root / "2022")
    assert hashes(tmp_path) == before
    assert hidden_entries(tmp_path, census) == []
