"""How the project re-runs by itself: the new-revision sensor, the weekly checksum schedule and the
automation conditions, evaluated with Dagster's own test helpers on temporary instances.

The schedule tests work on a writable copy of the real 2022 workbooks; a changed source is that
copy with one workbook republished (new bytes, still a valid workbook).
"""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import dagster as dg
import pytest
import requests

from naics_assets.assets.census import census_workbooks
from naics_assets.assets.codes import naics_codes, naics_index_entries
from naics_assets.assets.distances import naics_distances
from naics_assets.assets.triplets import naics_triplets
from naics_assets.definitions import defs
from naics_assets.resources import ArtifactStore, CensusSource
from naics_assets.schedules import CHANGE_TAG, CHANGED_TAG
from naics_ml.data.census import ROLES, workbook_specs
from naics_ml.data.download import source_checksums

from .pipeline import ASSET_NAMES

ASSETS = ASSET_NAMES
AFTER_CODES = ASSETS[3:]  # everything downstream of naics_codes
# evaluate_automation_conditions' own default selection uses a beta parameter (Dagster's noise)
pytestmark = pytest.mark.filterwarnings("ignore:Parameter `include_sources`:dagster.BetaWarning")


@pytest.fixture
def instance(dagster_home: Path) -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:  # persistent: schedule contexts refuse ephemeral
        yield instance


@pytest.fixture
def source(census_root: Path, tmp_path: Path) -> Path:
    """A writable copy of ``shared/census/2022``, laid out like NAICS_CENSUS_DIR."""
    root = tmp_path / "source"
    shutil.copytree(census_root / "2022", root / "2022", copy_function=shutil.copyfile)
    return root


def republish(folder: Path, role: str) -> str:
    """New bytes for one workbook, still a valid xlsx (a zip comment); returns its file name."""
    name = workbook_specs("2022")[role].file_name
    with zipfile.ZipFile(folder / name, "a") as book:
        book.comment = b"republished by the Census Bureau"
    return name


def tick(instance: dg.DagsterInstance, census: CensusSource) -> dg.ScheduleExecutionData:
    """One evaluation of the registered schedule, as the daemon asks it (run requests validated)."""
    schedule = defs.resolve_schedule_def("census_checksum_schedule")
    # closed after the tick: the context opens its own instance from the ref, and left open
    # that instance stays Dagster's current one after it is gone (later tests then fail)
    with dg.build_schedule_context(
        instance=instance,
        resources={"census": census},
        repository_def=defs.get_repository_def(),
    ) as context:
        return schedule.evaluate_tick(context)


def launch(instance: dg.DagsterInstance, request: dg.RunRequest) -> dg.DagsterRun:
    """Create the run the scheduler creates for ``request`` before it submits it."""
    return instance.create_run_for_job(
        job_def=defs.resolve_job_def("naics_revision_job"),
        tags={**request.tags, "dagster/partition": request.partition_key},
        status=dg.DagsterRunStatus.NOT_STARTED,
    )


def materialize_census(instance: dg.DagsterInstance, source: Path, store: Path) -> None:
    result = dg.materialize(
        [census_workbooks],
        partition_key="2022",
        resources={
            "census": CensusSource(local_dir=str(source)),
            "store": ArtifactStore(root=str(store)),
        },
        instance=instance,
    )
    assert result.success


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


# ---------------------------------------------------------------- wiring


def test_definitions_register_the_automation() -> None:
    graph = defs.resolve_asset_graph()
    for name in ("naics_index_entries", "naics_codes", *AFTER_CODES):
        condition = graph.get(dg.AssetKey(name)).automation_condition
        assert condition is not None and condition.get_label() == "eager", name
    assert graph.get(dg.AssetKey("census_workbooks")).automation_condition is None

    schedule = defs.resolve_schedule_def("census_checksum_schedule")
    assert schedule.cron_schedule == "0 6 * * 1"
    assert schedule.job_name == "naics_revision_job"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    automation = defs.resolve_sensor_def("naics_automation_sensor")
    assert automation.default_status == dg.DefaultSensorStatus.RUNNING
    job = defs.resolve_job_def("naics_revision_job")
    assert {k.to_user_string() for k in job.asset_layer.selected_asset_keys} == set(ASSETS)


def test_source_checksums_match_the_published_sums_and_leave_no_file(
    census_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    published = {}
    for line in (census_root / "2022" / "SHA256SUMS").read_text().split("\n"):
        if line.strip():
            digest, name = line.split(maxsplit=1)
            published[name.lstrip("*")] = digest
    sums = source_checksums("2022", census_root / "2022")
    specs = workbook_specs("2022")
    assert sums == {role: published[specs[role].file_name] for role in ROLES}
    assert list(tmp_path.iterdir()) == []  # fetched into a temporary folder, then deleted


# ---------------------------------------------------------------- new-revision sensor


def test_unknown_revision_is_added_and_run_then_nothing(instance, census_root: Path) -> None:
    sensor = defs.resolve_sensor_def("new_revision_sensor")
    assert sensor.job_name == "naics_revision_job"  # the whole graph
    resources = {"census": CensusSource(local_dir=str(census_root))}
    instance.add_dynamic_partitions("naics_revision", ["2022"])

    result = sensor(dg.build_sensor_context(instance=instance, resources=resources))
    assert [(r.partition_key, r.run_key) for r in result.run_requests] == [
        ("2017", "revision-2017")
    ]
    (added,) = result.dynamic_partitions_requests
    assert list(added.partition_keys) == ["2017"]
    instance.add_dynamic_partitions(added.partitions_def_name, list(added.partition_keys))

    again = sensor(dg.build_sensor_context(instance=instance, resources=resources))
    assert not again.run_requests and not again.dynamic_partitions_requests
    assert "no new revision" in again.skip_reason.skip_message


# ---------------------------------------------------------------- weekly checksum schedule


def test_nothing_to_compare_before_a_first_materialization(instance, source: Path) -> None:
    census = CensusSource(local_dir=str(source))
    assert tick(instance, census).skip_message == "no revision registered yet"

    instance.add_dynamic_partitions("naics_revision", ["2022"])
    data = tick(instance, census)
    assert not data.run_requests
    assert data.skip_message == "2022: census_workbooks never materialized, nothing to compare"

    # a materialization without checksums (recorded by hand) cannot be compared either
    instance.report_runless_asset_event(
        dg.AssetMaterialization("census_workbooks", partition="2022")
    )
    data = tick(instance, census)
    assert not data.run_requests
    assert "codes_sha256" in data.skip_message and "cross_references_sha256" in data.skip_message


def test_changed_checksum_requests_exactly_one_run(instance, source: Path, tmp_path: Path) -> None:
    census = CensusSource(local_dir=str(source))
    store = tmp_path / "artifacts"
    instance.add_dynamic_partitions("naics_revision", ["2022"])
    materialize_census(instance, source, store)
    assert tick(instance, census).skip_message == "2022: unchanged"

    before = snapshot(store / "2022" / "census")
    index_name = republish(source / "2022", "index")
    data = tick(instance, census)
    (request,) = data.run_requests
    assert request.partition_key == "2022"
    assert request.tags[CHANGED_TAG] == "index"
    state = dict(source_checksums("2022", source / "2022"))
    assert state["index"] == hashlib.sha256((source / "2022" / index_name).read_bytes()).hexdigest()
    assert request.run_key == request.tags[CHANGE_TAG]
    assert snapshot(store / "2022" / "census") == before  # nothing under storage/ replaced

    run = launch(instance, request)
    again = tick(instance, census)  # same changed state, its run pending: no second run
    assert not again.run_requests
    assert f"run {request.run_key} already requested" in again.skip_message

    instance.report_run_failed(run)  # a failed run is retried, under the same key
    (retry,) = tick(instance, census).run_requests
    assert retry.run_key == request.run_key

    materialize_census(instance, source, store)  # the run did its job: nothing left to do
    assert tick(instance, census).skip_message == "2022: unchanged"

    republish(source / "2022", "codes")  # a later change is a new state: a new run
    (later,) = tick(instance, census).run_requests
    assert later.tags[CHANGED_TAG] == "codes"
    assert later.run_key != request.run_key


def test_invalid_workbook_at_the_source_is_a_skip(instance, source: Path, tmp_path: Path) -> None:
    census = CensusSource(local_dir=str(source))
    instance.add_dynamic_partitions("naics_revision", ["2022"])
    materialize_census(instance, source, tmp_path / "artifacts")
    name = workbook_specs("2022")["descriptions"].file_name
    (source / "2022" / name).write_text("<!DOCTYPE html><html><body>Maintenance</body></html>")
    data = tick(instance, census)
    assert not data.run_requests
    assert data.skip_message.startswith("2022: the source's workbooks are not usable")
    assert name in data.skip_message and "HTML" in data.skip_message

    shutil.rmtree(source / "2022")  # the shared folder is gone: the file and folder are named
    data = tick(instance, census)
    assert f"not found in {source / '2022'}" in data.skip_message


class UnreachableSession:
    """The network boundary: every request fails as with no route to census.gov."""

    calls: ClassVar[list[str]] = []

    def get(self, url: str, timeout: float, stream: bool) -> object:
        UnreachableSession.calls.append(url)
        raise requests.ConnectionError(f"Failed to resolve 'www.census.gov' ({url})")


def test_unreachable_web_source_is_a_skip_with_the_reason(
    instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance.add_dynamic_partitions("naics_revision", ["2017", "2022"])
    for year in ("2017", "2022"):
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                "census_workbooks",
                partition=year,
                metadata={f"{role}_sha256": "0" * 64 for role in ROLES},
            )
        )
    monkeypatch.setattr(requests, "Session", UnreachableSession)
    UnreachableSession.calls = []
    web = CensusSource(local_dir=None, retries=2, backoff_s=0.0)
    data = tick(instance, web)
    assert not data.run_requests
    assert data.skip_message.startswith("source unreachable, not checked: 2017, 2022")
    assert "download failed after 2 attempts" in data.skip_message
    assert len(UnreachableSession.calls) == 2  # one file, twice; then the source is left alone
    assert UnreachableSession.calls[0].startswith("https://www.census.gov/naics/2017NAICS/")


# ---------------------------------------------------------------- automation conditions


def requested(result: dg.EvaluateAutomationConditionsResult) -> dict[str, list[str | None]]:
    keys = (dg.AssetKey(name) for name in ASSETS)
    found = {k.to_user_string(): sorted(result.get_requested_partitions(k)) for k in keys}
    return {name: partitions for name, partitions in found.items() if partitions}


def materialized_instance(instance: dg.DagsterInstance) -> dg.EvaluateAutomationConditionsResult:
    """Both revisions fully materialized; returns the first evaluation (the sensor turned on)."""
    instance.add_dynamic_partitions("naics_revision", ["2017", "2022"])
    for revision in ("2017", "2022"):
        for name in ASSETS:
            instance.report_runless_asset_event(dg.AssetMaterialization(name, partition=revision))
    return dg.evaluate_automation_conditions(defs=defs, instance=instance)


def test_rematerialized_codes_request_every_later_asset_once(instance) -> None:
    first = materialized_instance(instance)
    assert first.total_requested == 0  # turning the automation on launches nothing by itself

    instance.report_runless_asset_event(dg.AssetMaterialization("naics_codes", partition="2022"))
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert requested(result) == {name: ["2022"] for name in AFTER_CODES}

    again = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
    assert again.total_requested == 0


def test_no_duplicate_launch_while_a_run_rebuilds_them(instance) -> None:
    first = materialized_instance(instance)
    run = instance.create_run_for_job(
        job_def=defs.resolve_job_def("naics_revision_job"),
        asset_selection={dg.AssetKey(name) for name in AFTER_CODES},
        tags={"dagster/partition": "2022"},
        status=dg.DagsterRunStatus.STARTED,
    )
    instance.report_runless_asset_event(dg.AssetMaterialization("naics_codes", partition="2022"))
    busy = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert busy.total_requested == 0

    instance.report_run_canceled(run)  # it ended without rebuilding them: the update is remembered
    after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=busy.cursor)
    assert requested(after) == {name: ["2022"] for name in AFTER_CODES}


def test_new_revision_is_left_to_the_sensor_run(instance) -> None:
    first = materialized_instance(instance)
    instance.add_dynamic_partitions("naics_revision", ["2027"])
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert result.total_requested == 0  # census_workbooks missing: its run comes from the sensor


def test_a_real_run_of_the_data_chain_hands_on_only_what_it_did_not_build(
    instance, slice_root: Path, tmp_path: Path
) -> None:
    first = materialized_instance(instance)
    result = dg.materialize(
        [census_workbooks, naics_index_entries, naics_codes, naics_distances, naics_triplets],
        partition_key="2022",
        resources={
            "census": CensusSource(local_dir=str(slice_root)),
            "store": ArtifactStore(root=str(tmp_path / "artifacts")),
        },
        instance=instance,
        run_config={"ops": {"naics_triplets": {"config": {"cross_sector_k": 4, "workers": 1}}}},
    )
    assert result.success
    after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert requested(after) == {name: ["2022"] for name in AFTER_CODES[2:]}  # stages, embeddings
