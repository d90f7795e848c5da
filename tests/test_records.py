"""Users' records: reading a records folder in chunks, bad files named, ``business_codes``
coding a file with a revision's served stage (a tiny trained model), and the records sensor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from naics_assets.assets.records import business_codes, records_partitions, records_sensor
from naics_assets.partitions import revision_partitions
from naics_assets.resources import ArtifactStore, RecordsSource
from naics_ml.inference.entry_memory import MemoryConfig
from naics_ml.inference.serving import TunedBlend, choose_served_stage, save_blend
from naics_ml.records.coding import review_path
from naics_ml.records.source import (
    RecordsError,
    RecordsSettings,
    discover_records,
    plan_parts,
    read_chunks,
)
from naics_ml.revision_folder import RevisionFolder

from .test_classify import stage  # noqa: F401  (the tiny trained stage, a fixture)

TEXTS = ["wheat farm company", "gold mine company", "", None, "organic wheat growers"]


def write_records(folder: Path, name: str = "vendors.csv", rows: int = 25) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "records.yaml").write_text(
        "text_column: activity\nid_column: vendor\n"
        "files:\n  other.jsonl: {text_column: description}\n"
    )
    frame = pl.DataFrame(
        {
            "vendor": [f"V{i:03d}" for i in range(rows)],
            "activity": [TEXTS[i % len(TEXTS)] for i in range(rows)],
        }
    )
    path = folder / name
    {".csv": frame.write_csv, ".parquet": frame.write_parquet, ".jsonl": frame.write_ndjson}[
        path.suffix
    ](path)
    return path


def test_settings_come_from_records_yaml_with_per_file_overrides(tmp_path: Path) -> None:
    write_records(tmp_path)
    assert RecordsSettings.for_file(tmp_path, "vendors.csv") == RecordsSettings(
        "activity", "vendor"
    )
    other = RecordsSettings.for_file(tmp_path, "other.jsonl")
    assert other == RecordsSettings("description", "vendor")
    (tmp_path / "records.yaml").write_text("text_column: a\nid_column: b\ncolour: red\n")
    with pytest.raises(RecordsError, match=r"records.yaml: unknown setting\(s\) \['colour'\]"):
        RecordsSettings.for_file(tmp_path, "vendors.csv")
    (tmp_path / "records.yaml").unlink()
    with pytest.raises(RecordsError, match=r"records\.yaml: missing"):
        RecordsSettings.for_file(tmp_path, "vendors.csv")


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_a_file_is_read_in_chunks_of_at_most_the_asked_rows(tmp_path: Path, suffix: str) -> None:
    path = write_records(tmp_path, f"vendors{suffix}", rows=25)
    settings = RecordsSettings("activity", "vendor")
    chunks = list(read_chunks(path, settings, chunk_rows=10))
    assert [c.height for c in chunks] == [10, 10, 5]
    assert pl.concat(chunks)["vendor"].to_list() == [f"V{i:03d}" for i in range(25)]
    assert [f.name for f in discover_records(tmp_path)] == [f"vendors{suffix}"]


def test_bad_files_are_named_with_the_column_at_fault(tmp_path: Path) -> None:
    path = write_records(tmp_path)
    with pytest.raises(RecordsError, match=r"vendors.csv: no column 'text' \(text_column"):
        next(read_chunks(path, RecordsSettings("text", "vendor")))
    empty = tmp_path / "empty.csv"
    empty.write_text("vendor,activity\n")
    with pytest.raises(RecordsError, match=r"empty\.csv: the file has no rows"):
        list(read_chunks(empty, RecordsSettings("activity", "vendor")))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(RecordsError, match=r"broken\.parquet: cannot be read as parquet"):
        list(read_chunks(broken, RecordsSettings("activity", "vendor")))


@pytest.fixture()
def site(tmp_path: Path, stage) -> dict:  # noqa: F811
    """A revision 2022 whose served stage is the tiny trained stage, and a records folder."""
    artifacts = tmp_path / "artifacts"
    revision = RevisionFolder.under(artifacts, "2022")
    shutil.copytree(stage[0], revision.stage("stage_01_easy").path)
    save_blend(revision.stage("stage_01_easy").path, TunedBlend(MemoryConfig(), 0.5, {}, 0.5))
    choose_served_stage(revision, ["stage_01_easy"])
    stage[1].write_parquet(revision.codes)
    records = tmp_path / "records"
    write_records(records)
    return {"artifacts": artifacts, "revision": revision, "records": records}


def materialize(
    site: dict, name: str, _revision: str = "2022", **config
) -> dg.ExecuteInProcessResult:
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(revision_partitions.name, [_revision])
    instance.add_dynamic_partitions(records_partitions.name, [name])
    return dg.materialize(
        [business_codes],
        instance=instance,
        partition_key=dg.MultiPartitionKey({"revision": _revision, "records_file": name}),
        resources={
            "store": ArtifactStore(root=str(site["artifacts"])),
            "records": RecordsSource(local_dir=str(site["records"])),
        },
        run_config={
            "ops": {"business_codes": {"config": {"chunk_rows": 7, "part_rows": 70, **config}}}
        },
        raise_on_error=False,
    )


def test_business_codes_codes_every_row_in_chunks(site: dict) -> None:
    result = materialize(site, "vendors.csv")
    assert result.success
    out = pl.read_parquet(site["revision"].business_codes("vendors.csv"))
    assert out.height == 25 and out["vendor"].to_list() == [f"V{i:03d}" for i in range(25)]
    coded = out.filter(pl.col("error").is_null())
    assert coded.height == 15  # 10 rows have a blank or null text
    errors = set(out.filter(pl.col("error").is_not_null())["error"])
    assert errors == {"text is blank"}  # in a CSV file a missing text is an empty field
    assert coded["top5"].list.len().to_list() == [5] * 15
    first = coded.row(0, named=True)
    assert first["top5"][0]["code"] == first["code"] and first["confidence"] > 0
    wheat = coded.filter(pl.col("activity") == "wheat farm company")["code"].unique()
    assert wheat.len() == 1  # one text, one code, whichever chunk it fell in
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["codes_exist"].passed
    materialization = result.asset_materializations_for_node("business_codes")[0]
    meta = materialization.metadata
    assert meta["dagster/row_count"].value == 25 and meta["rows_without_text"].value == 10
    assert meta["model"].value.startswith("stage_01_easy")
    assert "| sector | rows |" in meta["codes_by_sector"].value
    share = meta["low_confidence_share"].value
    assert checks["low_confidence_share"].passed == (share <= 0.5)
    strict = materialize(site, "vendors.csv", max_low_confidence_share=0.0)
    warned = {c.check_name: c for c in strict.get_asset_check_evaluations()}
    assert strict.success and warned["low_confidence_share"].passed == (share == 0.0)


def test_a_file_cut_into_parts_is_read_back_whole_and_in_order(tmp_path: Path) -> None:
    path = write_records(tmp_path, "vendors.parquet", rows=25)
    settings = RecordsSettings("activity", "vendor")
    parts = plan_parts(path, settings, part_rows=10, chunk_rows=5)
    assert [(p.start, p.stop) for p in parts] == [(0, 10), (10, 20), (20, 25)]
    rows = [v for part in parts for chunk in part.chunks(3) for v in chunk["vendor"]]
    assert rows == [f"V{i:03d}" for i in range(25)]  # chunk and part edges do not meet
    with pytest.raises(RecordsError, match=r"part_rows \(10\) must be a positive multiple of"):
        plan_parts(path, settings, part_rows=10, chunk_rows=7)


def test_a_large_file_is_coded_in_parts_as_separate_steps_with_the_same_codes(site: dict) -> None:
    whole = materialize(site, "vendors.csv")
    out = site["revision"].business_codes("vendors.csv")
    one, one_review = pl.read_parquet(out), review_path(out).read_text()
    parted = materialize(site, "vendors.csv", part_rows=7)  # as many parts as chunks
    assert parted.success
    steps = {e.step_key for e in parted.all_events if e.event_type_value == "STEP_SUCCESS"}
    coding = sorted(s for s in steps if s.startswith("business_codes.code_part"))
    assert coding == sorted(f"business_codes.code_part[rows_{n}]" for n in (0, 7, 14, 21))
    assert pl.read_parquet(out).equals(one) and review_path(out).read_text() == one_review
    meta = parted.asset_materializations_for_node("business_codes")[0].metadata
    first = whole.asset_materializations_for_node("business_codes")[0].metadata
    assert meta["parts"].value == 4 and first["parts"].value == 1
    for key in ("dagster/row_count", "low_confidence_share", "rows_without_text"):
        assert meta[key].value == first[key].value
    assert meta["rows_changed"].value == 0 and meta["rows_unchanged"].value == 25
    assert not any(out.parent.glob(".*.parts"))  # the parts are gone once joined


def test_a_bad_file_fails_and_leaves_the_previous_codes(site: dict) -> None:
    assert materialize(site, "vendors.csv").success
    out = site["revision"].business_codes("vendors.csv")
    before = out.read_bytes()
    (site["records"] / "vendors.csv").write_text("vendor,text\nV1,wheat\n")
    result = materialize(site, "vendors.csv")
    assert not result.success
    assert "no column 'activity'" in str(result.all_events)
    assert out.read_bytes() == before


def test_the_sensor_adds_new_and_changed_files_and_reports_removed_ones(site: dict) -> None:
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(revision_partitions.name, ["2022", "2017"])  # 2017: no model
    resources = {
        "records": RecordsSource(local_dir=str(site["records"])),
        "store": ArtifactStore(root=str(site["artifacts"])),
    }

    def tick(cursor: str | None) -> dg.SensorResult:
        context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
        return records_sensor(context)

    first = tick(None)
    (request,) = first.run_requests
    assert request.partition_key == dg.MultiPartitionKey(
        {"revision": "2022", "records_file": "vendors.csv"}
    )
    assert first.dynamic_partitions_requests[0].partition_keys == ["vendors.csv"]
    instance.add_dynamic_partitions(records_partitions.name, ["vendors.csv"])
    assert tick(first.cursor).run_requests == []  # nothing changed
    write_records(site["records"], rows=30)
    changed = tick(first.cursor)
    assert [r.partition_key.keys_by_dimension["records_file"] for r in changed.run_requests] == [
        "vendors.csv"
    ]
    (site["records"] / "vendors.csv").unlink()
    gone = tick(changed.cursor)
    assert gone.run_requests == [] and json.loads(gone.cursor) == {}


def test_low_confidence_rows_go_to_review_and_a_recoding_reports_its_changes(site: dict) -> None:
    first = materialize(site, "vendors.csv")
    meta = first.asset_materializations_for_node("business_codes")[0].metadata
    assert meta["changes"].value == "first coding of this file"
    out = site["revision"].business_codes("vendors.csv")
    coded = pl.read_parquet(out)
    review = pl.read_csv(meta["review_file"].value, infer_schema_length=0)
    low = coded.filter(pl.col("confidence") < 0.5)
    assert review["id"].to_list() == low["vendor"].to_list()
    assert review["text"].to_list() == low["activity"].to_list()
    assert {"candidate_1_code", "candidate_5_confidence", "reviewed_code"} <= set(review.columns)
    assert review["reviewed_code"].null_count() == review.height
    # the file changes: two texts reworded, five rows added
    frame = pl.read_csv(site["records"] / "vendors.csv", infer_schema_length=0)
    frame = frame.with_columns(
        pl.when(pl.col("vendor").is_in(["V000", "V001"]))
        .then(pl.lit("gold mine company"))
        .otherwise(pl.col("activity"))
        .alias("activity")
    )
    extra = pl.DataFrame({"vendor": [f"N{i}" for i in range(5)], "activity": ["wheat farm"] * 5})
    pl.concat([frame, extra]).write_csv(site["records"] / "vendors.csv")
    second = materialize(site, "vendors.csv")
    meta = second.asset_materializations_for_node("business_codes")[0].metadata
    changed, unchanged, new = (meta[f"rows_{k}"].value for k in ("changed", "unchanged", "new"))
    assert new == 5 and changed + unchanged + new == 30  # the report sums to the file's rows
    recoded = pl.read_parquet(out)
    before = dict(zip(coded["vendor"], coded["code"], strict=True))
    after = dict(zip(recoded["vendor"], recoded["code"], strict=True))
    assert changed == sum(before[v] != after[v] for v in before)
    assert "| old code | new code |" in meta["changes"].value


def test_a_new_served_model_recodes_the_coded_files_of_its_revision() -> None:
    from naics_assets.definitions import defs

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(revision_partitions.name, ["2022", "2017"])
    instance.add_dynamic_partitions(records_partitions.name, ["vendors.csv", "never.csv"])

    def key(revision: str, name: str) -> dg.MultiPartitionKey:
        return dg.MultiPartitionKey({"revision": revision, "records_file": name})

    for revision in ("2022", "2017"):
        instance.report_runless_asset_event(
            dg.AssetMaterialization("naics_embeddings", partition=revision)
        )
        instance.report_runless_asset_event(
            dg.AssetMaterialization("business_codes", partition=key(revision, "vendors.csv"))
        )
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert first.total_requested == 0
    instance.report_runless_asset_event(
        dg.AssetMaterialization("naics_embeddings", partition="2022")
    )
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    recoded = result.get_requested_partitions(dg.AssetKey("business_codes"))
    assert recoded == {key("2022", "vendors.csv")}  # not 2017, not the file never coded
    again = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
    assert again.total_requested == 0


def test_two_revisions_agree_on_the_codes_they_share(tmp_path: Path) -> None:
    from naics_ml.records.revisions import revision_agreement, stable_codes

    def codes(titles: dict[str, str]) -> pl.DataFrame:
        return pl.DataFrame({"code": list(titles), "title": list(titles.values()), "level": 6})

    old = codes({"111110": "Soybean Farming", "222220": "Mining", "333330": "Old Title"})
    new = codes({"111110": "Soybean Farming", "222220": "Mining ", "333330": "New Title"})
    stable = stable_codes(old, new)
    assert sorted(stable["code"]) == ["111110", "222220"]  # renamed 333330 is left out

    def coded(name: str, values: list[str]) -> Path:
        path = tmp_path / name
        frame = pl.DataFrame({"id": ["a", "b", "c", "d"], "code": values})
        frame.with_columns(pl.lit(0.9).alias("confidence")).write_parquet(path)
        return path

    here = coded("2022.parquet", ["111110", "111110", "222220", "333330"])
    there = coded("2017.parquet", ["111110", "999990", "222220", "333330"])
    result = revision_agreement(here, there, stable, "id")
    assert result == {"rows": 3, "agree": 2, "share": 2 / 3}


def test_a_file_coded_in_two_revisions_reports_their_agreement(site: dict) -> None:
    other = RevisionFolder.under(site["artifacts"], "2017")
    shutil.copytree(site["revision"].models, other.models)
    codes = pl.read_parquet(site["revision"].codes)
    renamed = codes.filter(pl.col("level") == 6)["code"][0]
    codes.with_columns(
        pl.when(pl.col("code") == renamed).then(pl.lit("Renamed")).otherwise("title").alias("title")
    ).write_parquet(other.codes)
    assert materialize(site, "vendors.csv").success
    second = materialize(site, "vendors.csv", _revision="2017")
    assert second.success
    meta = second.asset_materializations_for_node("business_codes")[0].metadata
    agreement = meta["agreement_with_2022"].value
    coded = pl.read_parquet(site["revision"].business_codes("vendors.csv"))
    comparable = coded.filter(pl.col("code").is_not_null() & (pl.col("code") != renamed))
    assert agreement["rows"] == comparable.height and agreement["share"] == 1.0  # same model


def test_an_unchanged_file_is_not_read_again(tmp_path: Path) -> None:
    import dataclasses

    write_records(tmp_path)
    (first,) = discover_records(tmp_path)
    stale = dataclasses.replace(first, digest="kept")  # same size and modification time
    (again,) = discover_records(tmp_path, {first.name: stale})
    assert again.digest == "kept"  # taken from what the caller knew, the file unread
    write_records(tmp_path, rows=30)
    (changed,) = discover_records(tmp_path, {first.name: stale})
    assert changed.digest not in ("kept", first.digest)
