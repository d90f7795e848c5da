"""The clean code table built from the real 2022 and 2017 workbooks."""

from __future__ import annotations

import re

import polars as pl
import pytest

from naics_ml.data.codes import (
    build_code_table,
    level_counts,
    parent_of,
    referenced_codes,
    sector_of,
    split_description,
)
from naics_ml.data.invariants import check_level_counts, check_parents

COLUMNS = {
    "index": pl.Int32,
    "code": pl.String,
    "code_range": pl.String,
    "level": pl.Int8,
    "parent_index": pl.Int32,
    "sector": pl.String,
    "title": pl.String,
    "description": pl.String,
    "examples": pl.String,
    "excluded": pl.String,
    "excluded_codes": pl.List(pl.String),
}


def row(codes: pl.DataFrame, code: str) -> dict:
    found = codes.filter(pl.col("code") == code)
    assert found.height == 1, code
    return found.row(0, named=True)


def test_schema_and_dense_index(codes_2022: pl.DataFrame) -> None:
    for name, dtype in COLUMNS.items():
        assert codes_2022.schema[name] == dtype, name
    assert codes_2022["index"].to_list() == list(range(codes_2022.height))
    assert codes_2022["code"].is_unique().all()


def test_2022_level_counts(codes_2022: pl.DataFrame) -> None:
    assert codes_2022.height == 2_125
    assert level_counts(codes_2022) == {2: 20, 3: 96, 4: 308, 5: 689, 6: 1_012}
    assert check_level_counts(codes_2022, "2022")[0]


def test_2017_code_count(codes_2017: pl.DataFrame) -> None:
    assert codes_2017.height == 2_196
    assert sum(level_counts(codes_2017).values()) == 2_196
    assert level_counts(codes_2017)[2] == 20
    assert check_level_counts(codes_2017, "2017")[0]


@pytest.mark.parametrize("revision", ["2017", "2022"])
def test_range_sectors_survive(request, revision: str) -> None:
    codes = request.getfixturevalue(f"codes_{revision}")
    sectors = codes.filter(pl.col("level") == 2)
    assert sectors.height == 20
    ranges = dict(
        sectors.filter(pl.col("code") != pl.col("code_range")).select("code", "code_range").rows()
    )
    assert ranges == {"31": "31-33", "44": "44-45", "48": "48-49"}
    assert not set(sectors["code"]) & {"32", "33", "45", "49"}
    assert row(codes, "31")["title"] == "Manufacturing"
    assert row(codes, "44")["title"] == "Retail Trade"
    assert row(codes, "48")["title"] == "Transportation and Warehousing"
    # everything below 32/33, 45, 49 belongs to the merged sector and hangs under it
    for code, sector in [("332", "31"), ("333111", "31"), ("311", "31"), ("445", "44")]:
        assert row(codes, code)["sector"] == sector
    assert row(codes, "493")["sector"] == "48"
    assert row(codes, "332")["parent_code"] == "31"
    assert row(codes, "493")["parent_code"] == "48"
    assert set(codes["sector"]) == set(sectors["code"])
    assert (codes["sector"] == codes["code"].map_elements(sector_of, pl.String)).all()


@pytest.mark.parametrize("revision", ["2017", "2022"])
def test_titles_are_clean(request, revision: str) -> None:
    codes = request.getfixturevalue(f"codes_{revision}")
    titles = codes["title"]
    assert titles.null_count() == 0
    assert (titles == titles.str.strip_chars()).all()
    # the descriptions workbook appends a stray "T" to titles ("Crop ProductionT")
    assert not titles.str.contains(r"[a-z)]T$").any()
    assert row(codes, "111")["title"] == "Crop Production"
    assert row(codes, "1111")["title"] == "Oilseed and Grain Farming"


def test_titles_equal_the_descriptions_workbook_minus_the_stray_t(
    codes_2022: pl.DataFrame, tables_2022
) -> None:
    published = dict(tables_2022.descriptions.select("code", "title").iter_rows())
    stray = 0
    for code_range, title in codes_2022.select("code_range", "title").iter_rows():
        other = published[code_range].strip()
        if other.endswith("T") and other[:-1].rstrip() == title:
            stray += 1
        else:
            assert other == title, code_range
    assert stray > 500  # the pitfall is real on this file


@pytest.mark.parametrize("revision", ["2017", "2022"])
def test_null_descriptions_are_missing(request, revision: str) -> None:
    codes = request.getfixturevalue(f"codes_{revision}")
    tables = request.getfixturevalue(f"tables_{revision}")
    assert row(codes, "1112")["description"] is None
    description = codes["description"]
    assert not description.drop_nulls().str.strip_chars().str.to_uppercase().eq("NULL").any()
    assert not (description == "").any()
    published_null = {
        c for c, d in tables.descriptions.select("code", "description").iter_rows() if d == "NULL"
    }
    assert len(published_null) > 100
    assert set(codes.filter(description.is_null())["code"]) >= published_null


def test_see_industry_description_borrows_the_child_description(codes_2022: pl.DataFrame) -> None:
    assert row(codes_2022, "11111")["description"] == row(codes_2022, "111110")["description"]
    assert row(codes_2022, "11111")["description"].startswith("This industry comprises")
    assert not codes_2022["description"].drop_nulls().str.starts_with("See industry").any()


@pytest.mark.parametrize("revision", ["2017", "2022"])
def test_no_cross_reference_heading_or_examples_left_in_descriptions(
    request, revision: str
) -> None:
    codes = request.getfixturevalue(f"codes_{revision}")
    description = codes["description"].drop_nulls()
    assert not description.str.contains(r"Cross-References\.?\s*$").any()
    assert not description.str.contains("Cross-References.", literal=True).any()
    assert not description.str.contains("Illustrative Examples").any()
    assert (description == description.str.strip_chars()).all()


@pytest.mark.parametrize(
    ("code", "example"), [("111199", "Barley farming"), ("111335", "Almond farming")]
)
def test_illustrative_examples_move_to_examples(
    codes_2022: pl.DataFrame, tables_2022, code: str, example: str
) -> None:
    raw = dict(tables_2022.descriptions.select("code", "description").iter_rows())[code]
    assert "Illustrative Examples" in raw and example in raw.split("Illustrative Examples")[1]
    found = row(codes_2022, code)
    assert example in found["examples"].splitlines()
    assert example not in found["description"]
    assert found["description"].startswith("This U.S. industry comprises")


def test_examples_include_only_the_examples_split_of_the_index(
    codes_2022: pl.DataFrame, tables_2022
) -> None:
    from naics_ml.data.index_split import split_index_entries

    entries = split_index_entries(tables_2022.index, build_code_table(tables_2022))
    lines = {  # the examples channel keeps one copy of lines equal up to case
        (code, line.casefold())
        for code, text in codes_2022.select("code", "examples").drop_nulls().iter_rows()
        for line in text.splitlines()
    }
    by_split = {
        name: {
            (code, text.casefold())
            for code, text in entries.filter(pl.col("split") == name)
            .select("code", "text")
            .iter_rows()
        }
        for name in ("examples", "validation", "test")
    }
    assert by_split["examples"] <= lines
    # a held-out entry never reaches the examples channel of its own code
    assert not (by_split["validation"] | by_split["test"]) & lines


@pytest.mark.parametrize("revision", ["2017", "2022"])
def test_excluded_codes_name_codes_of_the_same_revision(request, revision: str) -> None:
    codes = request.getfixturevalue(f"codes_{revision}")
    known = set(codes["code"])
    position = dict(zip(codes["code"], codes["index"], strict=True))
    links = 0
    for code, excluded, names, indices in codes.select(
        "code", "excluded", "excluded_codes", "excluded_indices"
    ).iter_rows():
        assert code not in names
        assert set(names) <= known
        assert len(names) == len(set(names))
        assert indices == [position[n] for n in names]
        if names:
            assert excluded is not None
        links += len(names)
    assert links > 4_000  # about 4,600 redirections, most naming a code


def test_excluded_codes_match_the_cross_reference_text(codes_2022: pl.DataFrame) -> None:
    found = row(codes_2022, "111110")
    assert found["excluded_codes"] == ["111191"]
    assert "111191" in found["excluded"]
    # a code named in a 2022 cross-reference that does not exist in 2022 is dropped
    assert referenced_codes("are classified in U.S. Industry 999999, Nothing") == ["999999"]
    assert referenced_codes("are classified in Sector 31-33, Manufacturing") == ["31"]


def test_parents(codes_2022: pl.DataFrame, codes_2017: pl.DataFrame) -> None:
    for codes in (codes_2022, codes_2017):
        assert check_parents(codes)[0]
        level = dict(zip(codes["index"], codes["level"], strict=True))
        for code, lvl, parent_code, parent_index in codes.select(
            "code", "level", "parent_code", "parent_index"
        ).iter_rows():
            if lvl == 2:
                assert parent_code is None and parent_index is None
                continue
            assert parent_code == parent_of(code)
            assert codes["code"][parent_index] == parent_code
            assert level[parent_index] == lvl - 1
            assert code.startswith(parent_code) or lvl == 3


def test_split_description_unit_cases() -> None:
    assert split_description("NULL") == (None, [], None)
    assert split_description(None) == (None, [], None)
    text, examples, intro = split_description(
        "This industry grows corn.\n\nIllustrative Examples:\n\nSweet corn\nField corn\n"
        "\nCross-References. Establishments primarily engaged in--"
    )
    assert text == "This industry grows corn."
    assert examples == ["Sweet corn", "Field corn"]
    assert intro == "Establishments primarily engaged in--"
    assert split_description("Mining.\nCross-References.") == ("Mining.", [], None)


def test_code_pattern_rejects_malformed_codes(tables_2022) -> None:
    from dataclasses import replace

    from naics_ml.data.census import CensusFormatError

    bad = tables_2022.codes.with_columns(
        pl.when(pl.col("code") == "111110")
        .then(pl.lit("111110.0"))
        .otherwise(pl.col("code"))
        .alias("code")
    )
    with pytest.raises(CensusFormatError, match=re.escape("111110.0")):
        build_code_table(replace(tables_2022, codes=bad))
