"""Reviewed records as training labels: a labels file read and checked (unknown codes, empty
texts and evaluation texts named and skipped), split by a hash of the text, added to a stage's
real-text sets, and the labels sensor. The whole loop, with a stage trained on a reviewed file,
is ``tests/test_stage_assets.py::test_a_reviewed_file_trains_the_next_stage_and_recodes``."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from naics_assets.assets.labels import labels_sensor
from naics_assets.partitions import revision_partitions
from naics_assets.resources import ArtifactStore, RecordsSource
from naics_ml.data.index_split import normalize_text
from naics_ml.data.realtext import RealTextSplit
from naics_ml.records.labels import read_label_file, reviewed_labels, with_reviewed_labels
from naics_ml.records.source import RecordsError
from naics_ml.revision_folder import RevisionFolder

CODES = {"111110", "111120", "212221"}


def labels_file(path: Path, rows: list[tuple[str | None, str | None]]) -> Path:
    frame = pl.DataFrame(
        {
            "id": [f"R{i}" for i in range(len(rows))],
            "text": [t for t, _ in rows],
            "candidate_1_code": ["111110"] * len(rows),
            "reviewed_code": [c for _, c in rows],
        },
        schema={k: pl.String for k in ("id", "text", "candidate_1_code", "reviewed_code")},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_csv(path)
    return path


def test_a_labels_file_names_and_skips_what_cannot_train(tmp_path: Path) -> None:
    path = labels_file(
        tmp_path / "vendors.review.csv",
        [
            ("soybean growers", "111110"),  # line 2
            ("organic wheat", None),  # not reviewed yet
            ("gold digging", "999999"),  # line 4: unknown code
            ("  ", "111120"),  # line 5: empty text
            ("Gold Ore Mining", "212221"),  # line 6: an evaluation text
            ("wheat farm", " 111120 "),  # line 7
        ],
    )
    usable, report = read_label_file(path, CODES, {normalize_text("gold ore mining")})
    assert usable.select("text", "code").rows() == [
        ("soybean growers", "111110"),
        ("wheat farm", "111120"),
    ]
    assert (report.rows, report.reviewed) == (6, 5)
    assert report.unknown_codes == [(4, "999999")]
    assert report.empty_texts == [5] and report.evaluation_texts == [6]
    assert report.problems() == (
        "unknown code 999999 (line 4); empty text (line 5); evaluation text (line 6)"
    )
    broken = tmp_path / "bad.csv"
    broken.write_text("id,text\nR1,wheat\n")
    with pytest.raises(RecordsError, match=r"bad\.csv: no column\(s\) \['reviewed_code'\]"):
        read_label_file(broken, CODES, set())


def test_labels_split_by_a_hash_of_the_text_the_same_at_every_run(tmp_path: Path) -> None:
    texts = [f"firm number {i} grows wheat" for i in range(400)]
    labels_file(tmp_path / "a.csv", [(t, "111110") for t in texts[:200]])
    labels_file(tmp_path / "b.csv", [(t, "111120") for t in texts[200:]])
    split = RealTextSplit(validation=0.25, salt="test")
    labels, reports = reviewed_labels(tmp_path, CODES, set(), split)
    again, _ = reviewed_labels(tmp_path, CODES, set(), split)
    assert labels.equals(again) and labels.height == 400
    share = labels.filter(pl.col("split") == "validation").height / 400
    assert 0.18 < share < 0.32
    assert [(r.name, r.train + r.validation) for r in reports] == [("a.csv", 200), ("b.csv", 200)]
    # a file moved aside does not move the other file's texts across the split
    (tmp_path / "b.csv").unlink()
    alone, _ = reviewed_labels(tmp_path, CODES, set(), split)
    assert alone.equals(labels.filter(pl.col("file") == "a.csv"))


def test_reviewed_labels_join_a_stage_train_and_validation_sets(tmp_path: Path) -> None:
    maryland = pl.DataFrame({"text": ["dairy"], "codes": [["111120"]]})
    labels = pl.DataFrame(
        {
            "text": ["soy", "wheat", "corn"],
            "code": ["111110", "111120", "111110"],
            "split": ["train", "validation", "train"],
            "file": ["a.csv", "a.csv", "b.csv"],
        }
    )
    labels.write_parquet(tmp_path / "labels.parquet")
    frames, trained = with_reviewed_labels(
        {"train": maryland, "val": None, "eval": maryland}, tmp_path / "labels.parquet"
    )
    assert frames["train"].rows() == [
        ("dairy", ["111120"]),
        ("soy", ["111110"]),
        ("corn", ["111110"]),
    ]
    assert frames["val"].rows() == [("wheat", ["111120"])]
    assert frames["eval"] is maryland and trained == {"a.csv": 1, "b.csv": 1}
    same, none = with_reviewed_labels({"train": maryland}, tmp_path / "absent.parquet")
    assert same == {"train": maryland} and none == {}


def test_the_labels_sensor_asks_for_new_labels_in_every_materialized_revision(
    tmp_path: Path,
) -> None:
    labels, artifacts = tmp_path / "labels", tmp_path / "artifacts"
    for revision in ("2022", "2017"):
        codes = RevisionFolder.under(artifacts, revision).codes
        codes.parent.mkdir(parents=True)
        codes.write_bytes(b"")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(revision_partitions.name, ["2022", "2017", "2012"])
    resources = {
        "records": RecordsSource(labels_dir=str(labels)),
        "store": ArtifactStore(root=str(artifacts)),
    }

    def tick(cursor: str | None) -> dg.SensorResult:
        context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
        return labels_sensor(context)

    assert tick(None).skip_reason  # no folder yet
    labels_file(labels / "vendors.review.csv", [("soybean growers", "111110")])
    first = tick(None)
    assert sorted(r.partition_key for r in first.run_requests) == ["2017", "2022"]  # not 2012
    assert tick(first.cursor).skip_reason  # nothing changed
    labels_file(labels / "vendors.review.csv", [("soybean growers", "111120")])
    changed = tick(first.cursor)
    assert len(changed.run_requests) == 2
    assert changed.run_requests[0].run_key != first.run_requests[0].run_key
    (labels / "vendors.review.csv").unlink()
    removed = tick(changed.cursor)
    assert len(removed.run_requests) == 2 and json.loads(removed.cursor) == {}
