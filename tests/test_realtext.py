"""Real-text sets, the extra training queries, the strict test subset and the blend tuning."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from naics_ml.data.index_split import normalize_text
from naics_ml.data.realtext import (
    EVAL_FILE,
    VAL_FILE,
    RealTextFormatError,
    load_labelled_texts,
    split_labelled_texts,
)
from naics_ml.data.training_texts import crossref_queries, strip_lead, training_queries
from naics_ml.evaluation.blend_tuning import tune_blend
from naics_ml.evaluation.realtext_metrics import (
    realtext_metrics,
    sector_hit_rates,
    sector_metrics,
)
from naics_ml.evaluation.stage_report import strict_test_mask
from naics_ml.evaluation.tables import sector_table
from naics_ml.inference.blend import ScoreParts
from naics_ml.inference.entry_memory import MemoryConfig
from naics_ml.inference.serving import (
    TunedBlend,
    choose_served_stage,
    load_blend,
    save_blend,
    served_stage_dir,
)
from naics_ml.revision_folder import RevisionFolder

from .conftest import REALTEXT_ROOT


def test_realtext_metrics_count_any_listed_code_and_ties_against_the_model() -> None:
    candidates = ["111110", "111120", "212210", "541511"]
    score = np.array(
        [
            [0.1, 0.7, 0.1, 0.1],  # top 111120: one of its two codes -> hit
            [0.4, 0.2, 0.3, 0.1],  # true 212210 second; top shares no group, no sector
            [0.5, 0.5, 0.0, 0.0],  # tied with a wrong code: rank 2, not a hit
        ]
    )
    truth = [["541511", "111120"], ["212210"], ["111120"]]
    m = realtext_metrics(score, candidates, truth, "r_")
    assert m["r_hit1"] == pytest.approx(1 / 3)
    assert m["r_hit5"] == 1.0
    assert m["r_mrr"] == pytest.approx((1 + 1 / 2 + 1 / 2) / 3)
    assert m["r_sector_at_1"] == pytest.approx(2 / 3)  # rows 1 and 3 stay in sector 11
    assert m["r_group_at_1"] == pytest.approx(2 / 3)
    unknown = realtext_metrics(score[:1], candidates, [["999999"]], "")
    assert unknown["hit1"] == 0.0 and unknown["mrr"] == 0.0
    with pytest.raises(ValueError, match="does not match"):
        realtext_metrics(score, candidates, truth[:2])


def test_sector_table_names_each_sectors_hit_rate_and_main_confusion() -> None:
    candidates = np.array(["111110", "311111", "541511"])
    score = np.eye(3)[[0, 2, 2]]  # rows: 11 -> 11 (hit), 31 -> 54 (miss), 54 -> 54 (hit)
    table = sector_hit_rates(score, candidates, [["111110"], ["311111"], ["541511"]])
    rows = {r["sector"]: r for r in table.to_dicts()}
    assert rows["31"]["hit1"] == 0.0 and rows["31"]["main_confusion"] == "54"
    assert rows["11"]["hit1"] == 1.0 and rows["11"]["main_confusion"] is None


def test_sector_metrics_and_their_table_show_each_sector_beside_the_peer() -> None:
    candidates = np.array(["111110", "311111", "541511"])
    truth = [["111110"], ["311111"], ["541511"], ["311111"]]
    model = sector_metrics(np.eye(3)[[0, 2, 2, 1]], candidates, truth, "realtext_val_")
    assert model == {
        "realtext_val_sector_11_hit1": 1.0,
        "realtext_val_sector_11_rows": 1.0,
        "realtext_val_sector_31_hit1": 0.5,
        "realtext_val_sector_31_rows": 2.0,
        "realtext_val_sector_54_hit1": 1.0,
        "realtext_val_sector_54_rows": 1.0,
    }
    peer = sector_metrics(np.eye(3)[[1, 1, 2, 1]], candidates, truth, "baseline_peer_realtext_val_")
    table = sector_table(model | peer).splitlines()
    assert table[0] == "| sector | validation rows | validation hit@1 | validation peer hit@1 |"
    assert table[2:] == [
        "| 11 | 1 | 1.000 | 0.000 |",
        "| 31 | 2 | 0.500 | 1.000 |",
        "| 54 | 1 | 1.000 | 1.000 |",
    ]
    assert sector_table({}) == "no real-text sets: no figures by sector"


def test_shared_files_load_with_known_codes_only(tmp_path) -> None:
    boston = load_labelled_texts(REALTEXT_ROOT / EVAL_FILE)
    assert boston.height == 733 and boston["codes"].list.len().max() == 3
    maryland = load_labelled_texts(REALTEXT_ROOT / VAL_FILE, known_codes=["562111", "611710"])
    assert 0 < maryland.height < 887
    assert set(maryland["codes"].explode()) <= {"562111", "611710"}
    bad = tmp_path / "bad.csv"
    bad.write_text("description,naics_codes\nx,111110\n")
    with pytest.raises(RealTextFormatError, match=r"bad\.csv.*'text'"):
        load_labelled_texts(bad)


def test_validation_split_is_stable_and_disjoint() -> None:
    frame = load_labelled_texts(REALTEXT_ROOT / VAL_FILE)
    train, val = split_labelled_texts(frame)
    again_train, again_val = split_labelled_texts(frame)
    assert train.equals(again_train) and val.equals(again_val)
    assert train.height + val.height == frame.height
    assert 0.3 < val.height / frame.height < 0.5  # 0.4 by default
    assert not set(train["text"]) & set(val["text"])


def test_crossrefs_become_queries_for_the_code_they_point_to(codes_2022) -> None:
    pairs = {text.casefold(): code for text, code in crossref_queries(codes_2022)}
    assert pairs["manufacturing frozen whipped toppings"] == "311412"
    assert all(len(text.split()) >= 3 for text in pairs)
    assert strip_lead(
        "This industry comprises establishments primarily engaged in growing soybeans."
    ) == ("growing soybeans")


def test_training_queries_never_hold_a_held_out_phrasing_nor_an_evaluation_text(
    codes_2022, tmp_path
) -> None:
    from naics_ml.data.index_split import split_index_entries

    index = pl.DataFrame(
        {
            "code": ["311412", "311412", "111110", "111110"],
            "text": [
                "manufacturing frozen whipped toppings",  # also a cross-reference subject
                "Frozen dessert manufacturing",
                "Soybean farming",
                "Soybean seed farming",
            ],
        }
    )
    entries = split_index_entries(index, codes_2022)
    entries = entries.with_columns(pl.lit("test").alias("split"))  # every entry held out
    maryland_train, _ = split_labelled_texts(load_labelled_texts(REALTEXT_ROOT / VAL_FILE))
    queries = training_queries(codes_2022, entries, maryland_train)
    assert set(queries["split"]) == {"crossref", "description", "realtext"}  # no composite
    assert not set(queries["key"]) & set(entries["key"])
    assert "manufacturing frozen whipped toppings" not in set(queries["text"])
    boston = set(load_labelled_texts(REALTEXT_ROOT / EVAL_FILE)["text"])
    assert not boston & set(queries["text"])
    assert (queries["key"] == queries["text"].map_elements(normalize_text, pl.String)).all()


def test_strict_test_subset_drops_texts_contained_in_a_training_line() -> None:
    lines = ["Funeral homes combined with crematories", "Dairy farming"]
    tests = ["funeral homes", "Crematories", "Funeral parlors", "dairy  FARMING", "farm"]
    assert strict_test_mask(tests, lines).tolist() == [False, False, True, False, True]


def parts(code: np.ndarray, base: np.ndarray) -> ScoreParts:
    return ScoreParts(distance=-code, code=code, base=base)


def test_blend_tuning_picks_the_weights_that_win_on_validation(tmp_path) -> None:
    candidates = ["111110", "111120"]
    # the embedding is right on index texts; the base model is right on real texts
    index = parts(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[0.45, 0.55], [0.55, 0.45]]))
    real = parts(np.array([[0.4, 0.6], [0.6, 0.4]]), np.array([[0.9, 0.1], [0.1, 0.9]]))
    truth = {"index": [["111110"], ["111120"]], "real": [["111110"], ["111120"]]}
    tuned = tune_blend({"index": index, "real": real}, truth, candidates)
    assert tuned.per_set == {"index": 1.0, "real": 1.0} and tuned.score == 1.0
    assert 0.0 < tuned.config.base_weight < 0.8  # neither part alone gets both sets right
    only_index = tune_blend({"index": index}, {"index": truth["index"]}, candidates)
    assert only_index.config.base_weight == 0.0  # ties go to the smaller weight

    models = tmp_path / "models"
    for stage, score in (("stage_01_easy", 0.6), ("stage_02_medium", 0.7), ("stage_03_hard", 0.7)):
        (models / stage).mkdir(parents=True)
        save_blend(models / stage, TunedBlend(MemoryConfig(base_weight=score), score, {}, 0.5))
    assert load_blend(models / "stage_02_medium").base_weight == 0.7
    assert load_blend(tmp_path) is None
    stages = ["stage_01_easy", "stage_02_medium", "stage_03_hard"]
    revision = RevisionFolder(models.parent)
    assert choose_served_stage(revision, stages).name == "stage_03_hard"  # tie: later stage
    save_blend(models / "stage_01_easy", TunedBlend(MemoryConfig(), 0.9, {}, 0.5))
    assert choose_served_stage(revision, stages).name == "stage_01_easy"
    assert served_stage_dir(revision) == models / "stage_01_easy"


def test_missing_real_text_folder_or_file_is_skipped_not_an_error(tmp_path) -> None:
    from naics_assets.resources import RealTextSource

    assert RealTextSource().load(["111110"]) == {"eval": None, "val": None, "train": None}
    (tmp_path / VAL_FILE).write_text("text,naics_codes\nSOYBEAN FARM,111110\nWHEAT,111140\n")
    loaded = RealTextSource(local_dir=str(tmp_path), val_share=1.0).load(["111110", "111140"])
    assert loaded["eval"] is None  # no Boston file here: skipped
    assert loaded["val"].height == 2 and loaded["train"].height == 0
