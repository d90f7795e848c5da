"""Shared fixtures: the real Census workbooks (never copied into the repo) and tables built once.

The workbooks live next to the repository, in ``../shared/census/<YEAR>/`` (CI has them at the
same relative place). Building a code table or a distance matrix takes about a second, so each is
built once per test session and shared, read-only, by every test that needs it.
"""

from __future__ import annotations

import os
from pathlib import Path

import fastexcel
import numpy as np
import openpyxl
import polars as pl
import pytest

from naics_ml.data.census import workbook_specs

# Telemetry off before any library that reports usage is imported by a test module.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"
os.environ["DAGSTER_DISABLE_TELEMETRY"] = "1"
# Models load from the installed package or a tmp folder, never from a hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

CENSUS_ROOT = Path(__file__).resolve().parents[2] / "shared" / "census"
REALTEXT_ROOT = (
    CENSUS_ROOT.parent / "realtext"
)  # labelled firm descriptions (naics_ml.data.realtext)


@pytest.fixture(scope="session")
def census_root() -> Path:
    """``shared/census`` with the 2017 and 2022 folders; missing folders fail, never skip."""
    for year in ("2017", "2022"):
        folder = CENSUS_ROOT / year
        assert folder.is_dir(), f"real Census workbooks expected in {folder}"
    return CENSUS_ROOT


@pytest.fixture(scope="session")
def tables_2022(census_root: Path):
    from naics_ml.data.census import read_census

    return read_census(census_root / "2022", "2022")


@pytest.fixture(scope="session")
def tables_2017(census_root: Path):
    from naics_ml.data.census import read_census

    return read_census(census_root / "2017", "2017")


@pytest.fixture(scope="session")
def codes_2022(census_root: Path) -> pl.DataFrame:
    from naics_ml.data.codes import load_code_table

    return load_code_table(census_root / "2022", "2022")


@pytest.fixture(scope="session")
def codes_2017(census_root: Path) -> pl.DataFrame:
    from naics_ml.data.codes import load_code_table

    return load_code_table(census_root / "2017", "2017")


@pytest.fixture(scope="session")
def distance_2022(codes_2022: pl.DataFrame) -> np.ndarray:
    from naics_ml.data.taxonomy import tree_distance_matrix

    matrix = tree_distance_matrix(codes_2022)
    matrix.flags.writeable = False  # shared across tests: nobody may change it
    return matrix


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh DAGSTER_HOME per test, so no test touches the project's storage/."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


SLICE = ("22", "55")  # two small real sectors: every code path, in seconds


def as_cell(value: str | None) -> object:
    """Back to the published cell type: digits were numbers, everything else text."""
    if value is not None and value.isdigit():
        return int(value)
    return value


def write_slice(source: Path, dest: Path, file_name: str, sheet: str, code_column: str) -> None:
    frame = (
        fastexcel.read_excel(str(source / file_name))
        .load_sheet_by_name(sheet, dtypes="string")
        .to_polars()
    )
    code = pl.col(code_column).str.strip_chars()
    keep = frame.filter(
        pl.any_horizontal(code.str.starts_with(s) for s in SLICE) | (code == "******")
    )
    book = openpyxl.Workbook(write_only=True)
    out = book.create_sheet(sheet)
    out.append([None if c.startswith("__UNNAMED") else c for c in frame.columns])
    for row in keep.iter_rows():
        out.append([as_cell(v) for v in row])
    book.save(dest / file_name)


@pytest.fixture(scope="session")
def slice_root(census_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A census folder like shared/census/ whose 2022 workbooks hold sectors 22 and 55 only."""
    root = tmp_path_factory.mktemp("census_slice")
    folder = root / "2022"
    folder.mkdir()
    for spec in workbook_specs("2022").values():
        write_slice(census_root / "2022", folder, spec.file_name, spec.sheet, spec.columns["code"])
    return root


def metadata_of(result, asset: str) -> dict[str, object]:
    """Plain values of the one materialization of ``asset`` in a ``dg.materialize`` result."""
    import dagster as dg

    events = [
        e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)
    ]
    assert len(events) == 1, asset
    raw = events[0].materialization.metadata
    return {k: getattr(v, "value", v) for k, v in raw.items()}
