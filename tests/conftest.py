"""Shared fixtures: the real Census workbooks (never copied into the repo) and tables built once.

The workbooks live next to the repository, in ``../shared/census/<YEAR>/`` (CI has them at the
same relative place). Building a code table or a distance matrix takes about a second, so each is
built once per test session and shared, read-only, by every test that needs it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest

# Telemetry off before any library that reports usage is imported by a test module.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"
os.environ["DAGSTER_DISABLE_TELEMETRY"] = "1"

CENSUS_ROOT = Path(__file__).resolve().parents[2] / "shared" / "census"


@pytest.fixture(scope="session")
def census_root() -> Path:
    """``shared/census`` with the 2017 and 2022 folders; missing folders fail, never skip."""
    for year in ("2017", "2022"):
        folder = CENSUS_ROOT / year
        assert folder.is_dir(), f"real Census workbooks expected in {folder}"
    return CENSUS_ROOT


@pytest.fixture(scope="session")
def tables_2022(census_root: Path):
    from naics_ml.census import read_census

    return read_census(census_root / "2022", "2022")


@pytest.fixture(scope="session")
def tables_2017(census_root: Path):
    from naics_ml.census import read_census

    return read_census(census_root / "2017", "2017")


@pytest.fixture(scope="session")
def codes_2022(census_root: Path) -> pl.DataFrame:
    from naics_ml.codes import load_code_table

    return load_code_table(census_root / "2022", "2022")


@pytest.fixture(scope="session")
def codes_2017(census_root: Path) -> pl.DataFrame:
    from naics_ml.codes import load_code_table

    return load_code_table(census_root / "2017", "2017")


@pytest.fixture(scope="session")
def distance_2022(codes_2022: pl.DataFrame) -> np.ndarray:
    from naics_ml.taxonomy import tree_distance_matrix

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
