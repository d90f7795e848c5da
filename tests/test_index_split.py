"""The Census index split: deterministic, every split used, no held-out text in training text."""

from __future__ import annotations

import polars as pl
import pytest

from naics_ml.data.codes import build_code_table
from naics_ml.data.index_split import (
    SPLITS,
    SplitConfig,
    held_out_keys,
    normalize_text,
    split_index_entries,
    split_sizes,
)
from naics_ml.data.invariants import check_split_leakage


@pytest.fixture(scope="module")
def bare_2022(tables_2022) -> pl.DataFrame:
    return build_code_table(tables_2022)


@pytest.fixture(scope="module")
def entries_2022(tables_2022, bare_2022) -> pl.DataFrame:
    return split_index_entries(tables_2022.index, bare_2022)


def index_frame(rows: list[tuple[str, str]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"code": pl.String, "text": pl.String}, orient="row")


def test_split_is_deterministic(tables_2022, bare_2022, entries_2022) -> None:
    again = split_index_entries(tables_2022.index, bare_2022)
    assert again.equals(entries_2022)
    # the hash decides, not the row order
    shuffled = tables_2022.index.sample(fraction=1.0, shuffle=True, seed=7)
    reordered = split_index_entries(shuffled, bare_2022)
    assert dict(reordered.select("key", "split").unique().iter_rows()) == dict(
        entries_2022.select("key", "split").unique().iter_rows()
    )


def test_sizes_reported_and_every_split_used(tables_2022, entries_2022) -> None:
    sizes = split_sizes(entries_2022)
    assert list(sizes) == list(SPLITS)
    assert sum(sizes.values()) == entries_2022.height
    assert all(n > 0 for n in sizes.values()), sizes
    assert sizes["validation"] > 1_000 and sizes["test"] > 2_000
    assert entries_2022.columns == ["code", "index", "text", "key", "split"]
    assert entries_2022.schema["index"] == pl.Int32


def test_held_out_keys_are_the_validation_and_test_keys(entries_2022) -> None:
    keys = held_out_keys(entries_2022)
    by_split = {s: set(entries_2022.filter(pl.col("split") == s)["key"]) for s in SPLITS}
    assert keys == by_split["validation"] | by_split["test"]
    assert not keys & (by_split["train"] | by_split["examples"])  # a key lands in one split
    some_test = entries_2022.filter(pl.col("split") == "test")["text"][0]
    assert normalize_text(some_test.upper()) in keys  # a user's spelling of it is caught


def test_unassigned_rows_are_dropped(tables_2022, bare_2022, entries_2022) -> None:
    unassigned = (tables_2022.index["code"] == "******").sum()
    assert unassigned == 25
    assert entries_2022.height == tables_2022.index.height - unassigned
    assert "******" not in set(entries_2022["code"])
    codes = dict(zip(bare_2022["index"], bare_2022["code"], strict=True))
    assert all(codes[i] == c for c, i in entries_2022.select("code", "index").iter_rows())


def test_no_held_out_entry_in_training_text_on_real_data(
    entries_2022: pl.DataFrame, bare_2022: pl.DataFrame, codes_2022: pl.DataFrame
) -> None:
    # the final code table carries the examples split in its examples channel
    for codes in (bare_2022, codes_2022):
        passed, details = check_split_leakage(entries_2022, codes)
        assert passed, details
        assert details["leaked_count"] == 0
    held_out = set(entries_2022.filter(pl.col("split").is_in(["validation", "test"]))["key"])
    training = set(entries_2022.filter(pl.col("split").is_in(["examples", "train"]))["key"])
    for column in ("title", "examples", "excluded"):
        for text in codes_2022[column].drop_nulls():
            training.update(normalize_text(line) for line in text.splitlines() if line.strip())
    assert not held_out & training


def test_leakage_check_detects_a_leak(entries_2022, codes_2022) -> None:
    held = entries_2022.filter(pl.col("split") == "test").row(0, named=True)
    leaky = codes_2022.with_columns(
        pl.when(pl.col("code") == "111110")
        .then(pl.lit(held["text"].upper()))
        .otherwise(pl.col("title"))
        .alias("title")
    )
    passed, details = check_split_leakage(entries_2022, leaky)
    assert not passed
    assert details["leaked"] == [held["key"]]


def test_entry_duplicating_a_title_is_forced_into_examples(bare_2022: pl.DataFrame) -> None:
    """Held-out entries that repeat a title (any case, punctuation, order) are training text."""
    rows = []
    for code, title in bare_2022.select("code", "title").iter_rows():
        words = title.split()
        rows.append((code, " ".join(reversed(words)).upper() + "."))
    entries = split_index_entries(index_frame(rows), bare_2022)
    assert entries.height == bare_2022.height
    assert set(entries["split"]) == {"examples"}
    # the same texts with a word added are not protected and spread over all splits
    other = split_index_entries(index_frame([(c, t + " zzzq") for c, t in rows]), bare_2022)
    assert set(other["split"]) == set(SPLITS)


def test_entry_duplicating_an_exclusion_line_goes_to_examples(bare_2022: pl.DataFrame) -> None:
    lines = [
        (code, line)
        for code, text in bare_2022.select("code", "excluded").drop_nulls().iter_rows()
        for line in text.splitlines()[:1]
    ]
    entries = split_index_entries(index_frame(lines[:300]), bare_2022)
    assert set(entries["split"]) == {"examples"}


def test_near_duplicates_land_in_the_same_split(bare_2022: pl.DataFrame) -> None:
    variants = []
    for i in range(200):
        base = f"Widget {i} polishing and grinding services"
        variants.append(
            [
                base,
                base.upper(),
                f"widget {i}: grinding and polishing SERVICES!",
                f"Services -- grinding and polishing, widget {i}",
                f"Widget {i} polishing and grinding service",  # plural folded
            ]
        )
    rows = [("111110", text) for group in variants for text in group]
    entries = split_index_entries(index_frame(rows), bare_2022)
    assert entries.height == len(rows)
    splits = entries["split"].to_list()
    keys = entries["key"].to_list()
    for g in range(len(variants)):
        assert len(set(splits[5 * g : 5 * g + 5])) == 1, variants[g]
        assert len(set(keys[5 * g : 5 * g + 5])) == 1, variants[g]
    assert set(splits) == set(SPLITS)  # the groups themselves are spread out


def test_normalize_text() -> None:
    assert normalize_text("Soybean farming, field and seed production") == normalize_text(
        "SEED AND FIELD PRODUCTION -- FARMING SOYBEANS"
    )
    assert normalize_text("Glass") == "glass"  # "ss" is not a plural
    assert normalize_text("Bus") == "bus"  # short words keep their s
    assert normalize_text("Corn farming") != normalize_text("Corn milling")


def test_split_config_validation_and_shares(tables_2022, bare_2022) -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        SplitConfig(examples=0.5, train=0.5, validation=0.1, test=0.1)
    with pytest.raises(ValueError):
        SplitConfig(examples=-0.1, train=0.6, validation=0.3, test=0.2)
    only_test = split_index_entries(
        tables_2022.index, bare_2022, SplitConfig(examples=0, train=0, validation=0, test=1)
    )
    sizes = split_sizes(only_test)
    assert sizes["train"] == sizes["validation"] == 0
    assert sizes["examples"] > 0  # protected keys stay training text whatever the shares
    salted = split_index_entries(tables_2022.index, bare_2022, SplitConfig(salt="other"))
    base = split_index_entries(tables_2022.index, bare_2022)
    assert not salted["split"].equals(base["split"])


def test_unknown_index_code_is_rejected(bare_2022: pl.DataFrame) -> None:
    from naics_ml.data.census import CensusFormatError

    with pytest.raises(CensusFormatError, match="999999"):
        split_index_entries(index_frame([("999999", "Nothing")]), bare_2022)
