"""Curriculum files: the packaged stages and precise errors for bad files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from naics_ml.triplets.curriculum import (
    CurriculumError,
    CurriculumSpec,
    load_curriculum,
    packaged_curriculum_path,
)


def test_packaged_curricula_match_the_original_system() -> None:
    easy, medium, hard = (load_curriculum(n) for n in ("01_easy", "02_medium", "03_hard"))
    assert (easy.name, easy.positive_levels, easy.max_positive_distance) == ("01_easy", (6,), 2.0)
    assert easy.negative_buckets == {1: 0.5, 2: 0.5}
    assert (medium.positive_levels, medium.max_positive_distance) == ((5, 6), 3.0)
    assert set(medium.negative_buckets) == {1, 2, 5, 6}
    assert hard.positive_levels == (2, 3, 4, 5, 6)
    assert math.isinf(hard.max_positive_distance)
    assert set(hard.negative_buckets) == {1, 2, 3, 4, 5, 6, 8}
    assert min(hard.negative_buckets, key=hard.negative_buckets.get) not in (5, 6, 8)
    for spec in (easy, medium, hard):
        assert spec.k_negatives == 16
        assert spec.description
        assert abs(sum(spec.negative_buckets.values()) - 1) < 1e-6
        assert sum(spec.quotas().values()) == 16


def test_names_and_paths_resolve_to_the_same_spec(tmp_path: Path) -> None:
    path = packaged_curriculum_path("02_medium")
    assert path.is_file() and path.name == "02_medium.yaml"
    assert load_curriculum(path) == load_curriculum("02_medium") == load_curriculum(str(path))
    copy = tmp_path / "mine.yaml"
    copy.write_text(path.read_text())
    assert load_curriculum(copy) == load_curriculum("02_medium.yaml")


def test_quotas_round_and_redistribute() -> None:
    spec = CurriculumSpec("q", (6,), 2, {1: 0.2, 2: 0.2, 5: 0.3, 6: 0.3}, k_negatives=16)
    assert spec.quotas() == {1: 3, 2: 3, 5: 5, 6: 5}
    # bucket 5 and 6 empty for a pair: their share goes to 1 and 2
    assert spec.quotas([1, 2]) == {1: 8, 2: 8, 5: 0, 6: 0}
    assert spec.quotas([6]) == {1: 0, 2: 0, 5: 0, 6: 16}
    assert spec.quotas([]) == {1: 0, 2: 0, 5: 0, 6: 0}
    odd = CurriculumSpec("o", (6,), 2, {1: 1 / 3, 2: 1 / 3, 8: 1 / 3}, k_negatives=4)
    assert sum(odd.quotas().values()) == 4 and min(odd.quotas().values()) >= 1
    tiny = CurriculumSpec("t", (6,), 2, {h: 1 / 7 for h in (1, 2, 3, 4, 5, 6, 8)}, k_negatives=3)
    assert sum(tiny.quotas().values()) == 3 and min(tiny.quotas().values()) >= 0


def _write(tmp_path: Path, **changes: object) -> Path:
    data = yaml.safe_load(packaged_curriculum_path("02_medium").read_text())
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    path = tmp_path / "stage.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"negative_bucket": {1: 1.0}}, r"unknown key\(s\) negative_bucket"),
        ({"k_negatives": 0}, r"k_negatives: must be an int >= 1, got 0"),
        ({"k_negatives": 2.5}, r"k_negatives"),
        ({"negative_buckets": {1: 0.5, 2: 0.4}}, r"negative_buckets: shares sum to 0\.9"),
        ({"negative_buckets": {1: 0.5, 9: 0.5}}, r"negative_buckets: unknown hardness \[9\]"),
        ({"negative_buckets": {1: 1.5, 2: -0.5}}, r"shares must be in \(0, 1\]"),
        ({"negative_buckets": {}}, r"negative_buckets: must be a non-empty mapping"),
        ({"positive_levels": [1, 6, 7]}, r"positive_levels: \[1, 7\] outside 2\.\.6"),
        ({"positive_levels": []}, r"positive_levels: must be a non-empty list"),
        ({"max_positive_distance": -1}, r"max_positive_distance: must be a positive number"),
        ({"max_positive_distance": "far"}, r"max_positive_distance"),
        ({"name": ""}, r"name: must be a non-empty string"),
        ({"positive_levels": ...}, r"missing key\(s\) positive_levels"),
    ],
)
def test_bad_files_name_file_and_field(tmp_path: Path, changes: dict, message: str) -> None:
    path = _write(tmp_path, **changes)
    with pytest.raises(CurriculumError, match=message) as info:
        load_curriculum(path)
    assert str(path) in str(info.value)


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    path = _write(tmp_path, k_negatives=0, positive_levels=[9])
    with pytest.raises(CurriculumError) as info:
        load_curriculum(path)
    assert "k_negatives" in str(info.value) and "positive_levels" in str(info.value)


def test_tolerance_on_share_sum(tmp_path: Path) -> None:
    ok = _write(tmp_path, negative_buckets={1: 0.1, 2: 0.2, 5: 0.7000004})
    assert load_curriculum(ok).negative_buckets[5] == pytest.approx(0.7000004)
    bad = _write(tmp_path, negative_buckets={1: 0.1, 2: 0.2, 5: 0.70001})
    with pytest.raises(CurriculumError, match="must sum to 1"):
        load_curriculum(bad)


def test_missing_unknown_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(CurriculumError, match=r"nope\.yaml.*not found"):
        load_curriculum(tmp_path / "nope.yaml")
    with pytest.raises(CurriculumError, match=r"04_extreme.*not found"):
        load_curriculum("04_extreme")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(CurriculumError, match=r"broken\.yaml: not valid YAML"):
        load_curriculum(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(CurriculumError, match=r"list\.yaml: expected a mapping"):
        load_curriculum(listy)


def test_spec_validates_on_construction_and_round_trips() -> None:
    with pytest.raises(CurriculumError, match="positive_levels"):
        CurriculumSpec("x", (1,), 2.0, {1: 1.0})
    spec = load_curriculum("03_hard")
    again = CurriculumSpec(
        **{k: v for k, v in spec.to_dict().items()}
        | {
            "max_positive_distance": math.inf,
            "positive_levels": tuple(spec.positive_levels),
        }
    )
    assert again == spec
    assert spec.to_dict()["max_positive_distance"] is None
