"""The four Census NAICS workbooks: where they are, what they must contain, and reading them safely.

Column names carry the revision year (``2022 NAICS US   Code``, ``NAICS22``), so a spec is derived
from the revision string alone and a future revision needs no code change. Every cell is read as
text: the code columns mix integers and text (``31-33``), and inferring an integer type would turn
the three range sectors into nulls.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl

CENSUS_URL = "https://www.census.gov/naics/{year}NAICS/{file_name}"
ROLES = ("codes", "descriptions", "index", "cross_references")
_REVISION = re.compile(r"^(19|20)\d\d$")


class CensusFormatError(ValueError):
    """A workbook is not what the Census publishes: the message names the file and the problem."""


@dataclass(frozen=True)
class WorkbookSpec:
    """One workbook of one revision: file name, sheet and the columns we read (ours -> theirs)."""

    role: str
    file_name: str
    sheet: str
    columns: dict[str, str]

    def url(self, revision: str) -> str:
        return CENSUS_URL.format(year=revision, file_name=self.file_name.replace(" ", "%20"))


def validate_revision(revision: str) -> str:
    """Revisions become path components and URL parts, so accept four-digit years only."""
    if not isinstance(revision, str) or not _REVISION.fullmatch(revision):
        raise ValueError(f"NAICS revision must be a four-digit year like '2022', got {revision!r}")
    return revision


def workbook_specs(revision: str) -> dict[str, WorkbookSpec]:
    """The four workbooks of a revision, keyed by role."""
    y = validate_revision(revision)
    return {
        "codes": WorkbookSpec(
            "codes",
            f"2-6 digit_{y}_Codes.xlsx",
            f"tbl_{y}_title_description_coun",
            {"code": f"{y} NAICS US   Code", "title": f"{y} NAICS US Title"},
        ),
        "descriptions": WorkbookSpec(
            "descriptions",
            f"{y}_NAICS_Descriptions.xlsx",
            f"{y}_NAICS_Descriptions",
            {"code": "Code", "title": "Title", "description": "Description"},
        ),
        "index": WorkbookSpec(
            "index",
            f"{y}_NAICS_Index_File.xlsx",
            f"{y}NAICS",
            {"code": f"NAICS{y[2:]}", "text": "INDEX ITEM DESCRIPTION"},
        ),
        "cross_references": WorkbookSpec(
            "cross_references",
            f"{y}_NAICS_Cross_References.xlsx",
            f"{y}_NAICS_Cross_References",
            {"code": "Code", "text": "Cross-Reference"},
        ),
    }


def _header_key(name: str) -> str:
    # The codes header has three spaces in "US   Code"; re-saved copies sometimes have one.
    return " ".join(str(name).split()).casefold()


def check_xlsx_bytes(path: Path) -> None:
    """Reject HTML error pages, truncated downloads and other non-xlsx files before parsing."""
    path = Path(path)
    if not path.is_file():
        raise CensusFormatError(f"{path.name}: file not found at {path}")
    head = path.read_bytes()[:512]
    if not head:
        raise CensusFormatError(f"{path.name}: file is empty")
    stripped = head.lstrip().lower()
    if stripped.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        raise CensusFormatError(
            f"{path.name}: is an HTML/XML page (a server error page?), not an xlsx workbook"
        )
    if not head.startswith(b"PK\x03\x04"):
        raise CensusFormatError(f"{path.name}: not an xlsx workbook (no zip signature)")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            names = set(archive.namelist())
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise CensusFormatError(f"{path.name}: truncated or corrupt xlsx ({exc})") from exc
    if bad is not None:
        raise CensusFormatError(f"{path.name}: corrupt xlsx member {bad!r}")
    if "xl/workbook.xml" not in names:
        raise CensusFormatError(f"{path.name}: zip file without xl/workbook.xml, not an xlsx")


def _clean_cell(column: pl.Expr) -> pl.Expr:
    # Integer cells stored as floats in re-saved copies come back as "111110.0" on some readers.
    text = column.cast(pl.String).str.strip_chars()
    text = text.str.replace(r"^(\d+)\.0$", "$1")
    return pl.when(text == "").then(None).otherwise(text)


def read_workbook(path: Path, spec: WorkbookSpec) -> pl.DataFrame:
    """Read one workbook's sheet as text, renamed to our column names, empty rows dropped."""
    import fastexcel

    path = Path(path)
    check_xlsx_bytes(path)
    try:
        reader = fastexcel.read_excel(str(path))
    except Exception as exc:  # fastexcel raises its own error types
        raise CensusFormatError(f"{path.name}: cannot be opened as a workbook ({exc})") from exc
    if spec.sheet not in reader.sheet_names:
        raise CensusFormatError(
            f"{path.name}: sheet {spec.sheet!r} is missing (sheets: {reader.sheet_names})"
        )
    frame = reader.load_sheet_by_name(spec.sheet, dtypes="string").to_polars()
    by_key = {_header_key(c): c for c in frame.columns}
    missing = [theirs for theirs in spec.columns.values() if _header_key(theirs) not in by_key]
    if missing:
        raise CensusFormatError(
            f"{path.name}, sheet {spec.sheet!r}: missing column(s) {missing} "
            f"(found {[c for c in frame.columns if not c.startswith('__UNNAMED')]})"
        )
    frame = frame.select(
        _clean_cell(pl.col(by_key[_header_key(theirs)])).alias(ours)
        for ours, theirs in spec.columns.items()
    ).with_row_index("row", offset=2)  # the spreadsheet's row number (1 is the header)
    frame = frame.filter(~pl.all_horizontal(pl.exclude("row").is_null()))
    _check_codes_present(frame, path, spec)
    return frame.drop("row")


def _check_codes_present(frame: pl.DataFrame, path: Path, spec: WorkbookSpec) -> None:
    """A row with text but no code cannot be placed anywhere: name the rows."""
    rows = frame.filter(pl.col("code").is_null())["row"].to_list()
    if rows:
        shown = ", ".join(str(r) for r in rows[:10]) + (", ..." if len(rows) > 10 else "")
        raise CensusFormatError(
            f"{path.name}, sheet {spec.sheet!r}: {len(rows)} row(s) with text but no code in "
            f"column {spec.columns['code']!r} (spreadsheet row(s) {shown})"
        )


@dataclass(frozen=True)
class CensusTables:
    """The four sheets of one revision, as text frames with our column names."""

    revision: str
    codes: pl.DataFrame
    descriptions: pl.DataFrame
    index: pl.DataFrame
    cross_references: pl.DataFrame


def read_census(census_dir: Path, revision: str) -> CensusTables:
    """Read all four workbooks of a revision from a folder laid out like shared/census/<YEAR>/."""
    specs = workbook_specs(revision)
    frames = {role: read_workbook(Path(census_dir) / s.file_name, s) for role, s in specs.items()}
    return CensusTables(revision=revision, **frames)
