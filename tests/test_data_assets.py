"""The Dagster data assets on a slice of the real 2022 workbooks (sectors 22 and 55 only).

The slice keeps the official file names, sheets and headers, and cell types (codes as numbers,
``******`` as text), so every parsing path runs as on the full workbooks, in a few seconds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from naics_assets.assets.census import census_workbooks
from naics_assets.assets.codes import naics_codes, naics_index_entries
from naics_assets.assets.distances import naics_distances
from naics_assets.assets.triplets import naics_triplets
from naics_assets.partitions import revision_partitions
from naics_assets.resources import ArtifactStore, CensusSource
from naics_assets.sensors import new_revision_sensor
from naics_ml.data.census import workbook_specs
from naics_ml.data.taxonomy import tree_distance_matrix

from .conftest import SLICE, metadata_of
from .pipeline import error_text

DATA_ASSETS = [census_workbooks, naics_index_entries, naics_codes, naics_distances, naics_triplets]
DATA_CHECKS = {
    ("naics_codes", "level_counts"),
    ("naics_codes", "parents_exist"),
    ("naics_index_entries", "no_split_leakage"),
    ("naics_distances", "pair_count"),
    ("naics_distances", "symmetric"),
    ("naics_distances", "triangle_inequality"),
    ("naics_triplets", "distance_order"),
    ("naics_triplets", "sector_coverage"),
}
RUN_CONFIG = {"ops": {"naics_triplets": {"config": {"cross_sector_k": 4, "workers": 1}}}}


@pytest.fixture(scope="module")
def slice_codes(codes_2022: pl.DataFrame) -> pl.DataFrame:
    return codes_2022.filter(pl.col("sector").is_in(SLICE))


@pytest.fixture
def instance(dagster_home: Path):
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_definitions_load_with_the_data_assets_and_checks() -> None:
    from naics_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {a.key.to_user_string() for a in DATA_ASSETS} <= keys
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert checks >= DATA_CHECKS
    parents = {
        name: {p.to_user_string() for p in graph.get(dg.AssetKey(name)).parent_keys}
        for name in ("naics_index_entries", "naics_codes", "naics_distances", "naics_triplets")
    }
    assert parents["naics_index_entries"] == {"census_workbooks"}
    assert parents["naics_codes"] >= {"census_workbooks"}
    assert parents["naics_distances"] == {"naics_codes"}
    assert parents["naics_triplets"] == {"naics_codes", "naics_distances"}
    for asset in DATA_ASSETS:
        assert asset.partitions_def == revision_partitions
    assert revision_partitions.name == "naics_revision"
    assert defs.resolve_sensor_def("new_revision_sensor") is not None
    assert defs.resolve_job_def("naics_revision_job") is not None


def test_materialize_chain_on_a_slice_then_fail_on_a_broken_source(
    slice_root: Path, slice_codes: pl.DataFrame, tables_2022, instance, tmp_path: Path
) -> None:
    store_root = tmp_path / "artifacts"
    instance.add_dynamic_partitions(revision_partitions.name, ["2022"])
    resources = {
        "census": CensusSource(local_dir=str(slice_root)),
        "store": ArtifactStore(root=str(store_root)),
    }
    result = dg.materialize(
        DATA_ASSETS,
        partition_key="2022",
        resources=resources,
        instance=instance,
        run_config=RUN_CONFIG,
        raise_on_error=False,
    )
    assert result.success, error_text(result)

    # ---- checks: level_counts must fail on a two-sector slice, everything else passes
    outcomes = {
        (e.asset_key.to_user_string(), e.check_name): e.passed
        for e in result.get_asset_check_evaluations()
    }
    assert set(outcomes) == DATA_CHECKS
    assert {k for k, passed in outcomes.items() if not passed} == {("naics_codes", "level_counts")}

    # ---- metadata
    n = slice_codes.height
    assert n == 32
    census = metadata_of(result, "census_workbooks")
    for role, spec in workbook_specs("2022").items():
        path = slice_root / "2022" / spec.file_name
        assert census[f"{role}_bytes"] == path.stat().st_size
        assert census[f"{role}_source"] == str(path.resolve())
        assert len(census[f"{role}_sha256"]) == 64

    in_slice = tables_2022.index.filter(
        pl.col("code").str.slice(0, 2).is_in(SLICE) | (pl.col("code") == "******")
    )
    entries = metadata_of(result, "naics_index_entries")
    assert entries["dropped_unassigned_rows"] == 25
    assert entries["dagster/row_count"] == in_slice.height - 25
    assert (
        sum(entries[f"split_{s}"] for s in ("examples", "train", "validation", "test"))
        == (entries["dagster/row_count"])
    )

    codes_meta = metadata_of(result, "naics_codes")
    assert codes_meta["dagster/row_count"] == n
    by_level = slice_codes.group_by("level").len()
    for level, count in by_level.iter_rows():
        assert codes_meta[f"level_{level}"] == count

    distances = metadata_of(result, "naics_distances")
    assert distances["dagster/row_count"] == n * (n - 1) // 2 == 496
    assert distances["pairs_within_sector"] == 25 * 24 // 2 + 7 * 6 // 2
    assert distances["tree_nodes"] == n

    triplets = metadata_of(result, "naics_triplets")
    assert triplets["sectors_built"] == 2

    # ---- files under the store root
    base = store_root / "2022"
    census_files = sorted(p.name for p in (base / "census").iterdir())
    assert census_files == sorted(s.file_name for s in workbook_specs("2022").values())
    for name in census_files:
        assert (base / "census" / name).read_bytes() == (slice_root / "2022" / name).read_bytes()
    codes = pl.read_parquet(base / "naics_codes.parquet")
    assert codes["code"].to_list() == slice_codes["code"].to_list()
    assert codes["title"].to_list() == slice_codes["title"].to_list()
    assert codes["description"].to_list() == slice_codes["description"].to_list()
    known = set(slice_codes["code"])
    assert codes["excluded_codes"].to_list() == [
        [c for c in names if c in known] for names in slice_codes["excluded_codes"]
    ]
    pairs = pl.read_parquet(base / "naics_distances.parquet")
    assert pairs.height == 496
    matrix = tree_distance_matrix(codes)
    assert np.array_equal(
        pairs["distance"].to_numpy(), matrix[pairs["i"].to_numpy(), pairs["j"].to_numpy()]
    )
    shards = pl.read_parquet(base / "triplets" / "sector=*" / "*.parquet")
    assert sorted(p.name for p in (base / "triplets").iterdir()) == ["sector=22", "sector=55"]
    assert triplets["dagster/row_count"] == shards.height > 0
    for hardness, count in shards.group_by("hardness").len().iter_rows():
        assert triplets[f"hardness_{hardness}"] == count
    assert set(shards["hardness"].unique()) >= {1, 8}
    assert (
        shards.filter(pl.col("hardness") == 1).group_by("anchor", "positive").len()["len"] == 4
    ).all()

    # ---- a broken source fails census_workbooks and leaves the earlier files alone
    before = snapshot(base)
    broken = tmp_path / "broken"
    shutil.copytree(slice_root, broken)
    bad_name = workbook_specs("2022")["descriptions"].file_name
    (broken / "2022" / bad_name).write_text(
        "<!DOCTYPE html><html><body><h1>503 Service Unavailable</h1></body></html>"
    )
    failed = dg.materialize(
        [census_workbooks],
        partition_key="2022",
        resources={**resources, "census": CensusSource(local_dir=str(broken))},
        instance=instance,
        raise_on_error=False,
    )
    assert not failed.success
    message = error_text(failed)
    assert bad_name in message
    assert "HTML" in message
    assert snapshot(base) == before


def test_sensor_adds_missing_revisions_then_skips(instance, tmp_path: Path) -> None:
    local = tmp_path / "census"
    for year in ("2017", "2022"):
        (local / year).mkdir(parents=True)
    (local / "notes").mkdir()  # not a revision
    resources = {"census": CensusSource(local_dir=str(local))}

    context = dg.build_sensor_context(instance=instance, resources=resources)
    result = new_revision_sensor(context)
    assert isinstance(result, dg.SensorResult)
    assert sorted(r.partition_key for r in result.run_requests) == ["2017", "2022"]
    assert len({r.run_key for r in result.run_requests}) == 2
    (request,) = result.dynamic_partitions_requests
    assert request.partitions_def_name == "naics_revision"
    assert sorted(request.partition_keys) == ["2017", "2022"]

    instance.add_dynamic_partitions("naics_revision", list(request.partition_keys))
    again = new_revision_sensor(dg.build_sensor_context(instance=instance, resources=resources))
    assert not again.run_requests
    assert not again.dynamic_partitions_requests
    assert again.skip_reason is not None

    # only a revision still missing is requested
    (local / "2027").mkdir()
    third = new_revision_sensor(dg.build_sensor_context(instance=instance, resources=resources))
    assert [r.partition_key for r in third.run_requests] == ["2027"]


def test_cli_adds_revisions_and_rejects_bad_ones(
    dagster_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from naics_assets.cli import main

    assert main(["add-revision", "2022", "2017"]) == 0
    assert "added: 2022, 2017" in capsys.readouterr().out
    assert main(["add-revision", "2022"]) == 0
    assert "none" in capsys.readouterr().out
    with dg.DagsterInstance.get() as instance:
        assert sorted(instance.get_dynamic_partitions("naics_revision")) == ["2017", "2022"]

    with pytest.raises(SystemExit) as exit_info:
        main(["add-revision", "2027", "20x2"])
    assert exit_info.value.code == 2
    assert "20x2" in capsys.readouterr().err
    with dg.DagsterInstance.get() as instance:  # nothing of the rejected call was added
        assert sorted(instance.get_dynamic_partitions("naics_revision")) == ["2017", "2022"]
    assert any(dagster_home.iterdir())  # the instance lives in the temporary DAGSTER_HOME
