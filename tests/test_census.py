"""Reading the Census workbooks: real-data pitfalls, bad input, and fetching with retries."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import openpyxl
import polars as pl
import pytest
import requests

from naics_ml.data.census import (
    CensusFormatError,
    read_census,
    read_workbook,
    validate_revision,
    workbook_specs,
)
from naics_ml.data.download import DownloadConfig, download, fetch_workbooks

CODE = re.compile(r"^\d{2,6}$")


def write_xlsx(path: Path, sheets: dict[str, list[list[object]]]) -> Path:
    """A small workbook with the given sheets (first row = header)."""
    book = openpyxl.Workbook()
    book.remove(book.active)
    for name, rows in sheets.items():
        sheet = book.create_sheet(name)
        for row in rows:
            sheet.append(row)
    book.save(path)
    return path


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below ``folder`` (relative name) -> (bytes, mtime_ns)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------- real workbooks


def test_specs_follow_the_revision_year_and_reject_bad_revisions() -> None:
    specs = workbook_specs("2027")  # a future revision needs no code change
    assert specs["codes"].file_name == "2-6 digit_2027_Codes.xlsx"
    assert specs["index"].columns["code"] == "NAICS27"
    assert specs["codes"].url("2027") == (
        "https://www.census.gov/naics/2027NAICS/2-6%20digit_2027_Codes.xlsx"
    )
    for bad in ("20x2", "22", "../2022", "2022/..", "", "1850"):
        with pytest.raises(ValueError, match="four-digit"):
            validate_revision(bad)


def test_revision_with_trailing_newline_is_rejected() -> None:
    """BUG (naics_ml/data/census.py ``_REVISION``): ``re.match`` with ``$`` accepts "2022\\n",
    which then becomes a path component, a URL part and a Dagster partition key. Use
    ``fullmatch``/``\\Z``."""
    with pytest.raises(ValueError, match="four-digit"):
        validate_revision("2022\n")


def test_range_sectors_are_read_as_text(tables_2022, tables_2017) -> None:
    for tables in (tables_2022, tables_2017):
        codes = tables.codes["code"].to_list()
        for published in ("31-33", "44-45", "48-49"):
            assert published in codes
        assert tables.codes["code"].null_count() == 0
        assert set(tables.descriptions["code"]) >= {"31-33", "44-45", "48-49"}


@pytest.mark.parametrize("revision", ["2017", "2022"])
@pytest.mark.parametrize("role", ["index", "cross_references"])
def test_integer_code_columns_read_as_plain_digits(request, revision: str, role: str) -> None:
    """The index and cross-reference files store codes as numbers (a float reader says 111110.0)."""
    tables = request.getfixturevalue(f"tables_{revision}")
    codes = getattr(tables, role)["code"]
    assert codes.dtype == pl.String
    assert "111110" in set(codes)
    odd = [c for c in codes.unique() if not CODE.match(c) and c != "******"]
    assert odd == []
    assert not any(c.endswith(".0") for c in codes)


def test_unassigned_index_rows_survive_reading(tables_2022) -> None:
    """A numeric column reader would turn the text ``******`` into null; we keep it as text."""
    assert (tables_2022.index["code"] == "******").sum() == 25
    assert tables_2022.index.height == 20_398


def test_float_typed_codes_lose_the_trailing_zero(tmp_path: Path) -> None:
    spec = workbook_specs("2022")["cross_references"]
    path = write_xlsx(
        tmp_path / spec.file_name,
        {spec.sheet: [["Code", "Cross-Reference"], [111110.0, "a"], [31, "b"], ["31-33", "c"]]},
    )
    frame = read_workbook(path, spec)
    assert frame["code"].to_list() == ["111110", "31", "31-33"]
    assert frame.columns == ["code", "text"]


def test_header_with_collapsed_spaces_is_accepted(tmp_path: Path) -> None:
    """The codes header has three spaces ("US   Code"); a re-saved copy with one still reads."""
    spec = workbook_specs("2022")["codes"]
    path = write_xlsx(
        tmp_path / spec.file_name,
        {
            spec.sheet: [
                ["Seq. No.", "2022 NAICS US Code", "2022 NAICS US Title"],
                [1, 11, "Agriculture, Forestry, Fishing and Hunting"],
                [None, None, None],
                [2, "31-33", "Manufacturing "],
            ]
        },
    )
    frame = read_workbook(path, spec)
    assert frame.rows() == [
        ("11", "Agriculture, Forestry, Fishing and Hunting"),
        ("31-33", "Manufacturing"),
    ]


# ---------------------------------------------------------------- bad input


@pytest.fixture
def descriptions_spec():
    return workbook_specs("2022")["descriptions"]


def test_html_error_page_saved_as_xlsx(tmp_path: Path, descriptions_spec) -> None:
    path = tmp_path / descriptions_spec.file_name
    path.write_text(
        "<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>"
        "<body>The page you requested is unavailable.</body></html>"
    )
    with pytest.raises(CensusFormatError) as error:
        read_workbook(path, descriptions_spec)
    message = str(error.value)
    assert descriptions_spec.file_name in message
    assert "HTML" in message


def test_truncated_xlsx(tmp_path: Path, census_root: Path, descriptions_spec) -> None:
    real = (census_root / "2022" / descriptions_spec.file_name).read_bytes()
    path = tmp_path / descriptions_spec.file_name
    path.write_bytes(real[: len(real) // 2])
    with pytest.raises(CensusFormatError) as error:
        read_workbook(path, descriptions_spec)
    message = str(error.value)
    assert descriptions_spec.file_name in message
    assert "truncated" in message


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"Code,Title,Description\n11,Agriculture,Farms\n", "not an xlsx"),
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n" + bytes(200), "not an xlsx"),
    ],
)
def test_non_xlsx_file(tmp_path: Path, descriptions_spec, content: bytes, problem: str) -> None:
    path = tmp_path / descriptions_spec.file_name
    path.write_bytes(content)
    with pytest.raises(CensusFormatError) as error:
        read_workbook(path, descriptions_spec)
    assert descriptions_spec.file_name in str(error.value)
    assert problem in str(error.value)


def test_zip_that_is_not_a_workbook(tmp_path: Path, descriptions_spec) -> None:
    path = tmp_path / descriptions_spec.file_name
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "not a spreadsheet")
    with pytest.raises(CensusFormatError) as error:
        read_workbook(path, descriptions_spec)
    assert descriptions_spec.file_name in str(error.value)
    assert "xl/workbook.xml" in str(error.value)


def test_missing_file(tmp_path: Path, descriptions_spec) -> None:
    with pytest.raises(CensusFormatError, match=re.escape(descriptions_spec.file_name)):
        read_workbook(tmp_path / descriptions_spec.file_name, descriptions_spec)


def test_missing_sheet(tmp_path: Path, descriptions_spec) -> None:
    path = write_xlsx(
        tmp_path / descriptions_spec.file_name,
        {"Sheet1": [["Code", "Title", "Description"], [11, "Agriculture", "Farms"]]},
    )
    with pytest.raises(CensusFormatError) as error:
        read_workbook(path, descriptions_spec)
    message = str(error.value)
    assert descriptions_spec.file_name in message
    assert descriptions_spec.sheet in message
    assert "missing" in message


def test_missing_column(tmp_path: Path, descriptions_spec) -> None:
    path = write_xlsx(
        tmp_path / descriptions_spec.file_name,
        {descriptions_spec.sheet: [["Code", "Title", "Text"], [11, "Agriculture", "Farms"]]},
    )
    with pytest.raises(CensusFormatError) as error:
        read_workbook(path, descriptions_spec)
    message = str(error.value)
    assert descriptions_spec.file_name in message
    assert "missing column" in message
    assert "'Description'" in message


def test_index_row_without_code_is_rejected(tmp_path: Path, census_root: Path) -> None:
    folder = tmp_path / "2022"
    folder.mkdir()
    specs = workbook_specs("2022")
    for role in ("codes", "descriptions", "cross_references"):
        (folder / specs[role].file_name).symlink_to(census_root / "2022" / specs[role].file_name)
    write_xlsx(
        folder / specs["index"].file_name,
        {
            specs["index"].sheet: [
                ["NAICS22", "INDEX ITEM DESCRIPTION"],
                [111110, "Soybean farming"],
                [None, "Orphan entry"],
            ]
        },
    )
    with pytest.raises(CensusFormatError) as error:
        read_census(folder, "2022")
    assert specs["index"].file_name in str(error.value)
    assert "NAICS22" in str(error.value)


# ---------------------------------------------------------------- fetching


def test_local_fetch_copies_byte_identical_files_with_checksums(
    tmp_path: Path, census_root: Path
) -> None:
    dest = tmp_path / "census"
    fetched = fetch_workbooks("2022", dest, local_dir=census_root / "2022")
    assert [f.role for f in fetched] == ["codes", "descriptions", "index", "cross_references"]
    for item in fetched:
        source = census_root / "2022" / item.path.name
        assert item.path.parent == dest
        assert item.path.read_bytes() == source.read_bytes()
        assert item.bytes == source.stat().st_size
        assert item.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
        assert item.source == str(source.resolve())
    assert sorted(p.name for p in dest.iterdir()) == sorted(f.path.name for f in fetched)


def test_published_checksums_match(census_root: Path) -> None:
    for year in ("2017", "2022"):
        folder = census_root / year
        for line in (folder / "SHA256SUMS").read_text().splitlines():
            if not line.strip():
                continue
            digest, name = line.split(maxsplit=1)
            name = name.lstrip("*")
            assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name


def test_one_bad_file_leaves_previous_files_untouched(tmp_path: Path, census_root: Path) -> None:
    dest = tmp_path / "census"
    fetch_workbooks("2022", dest, local_dir=census_root / "2022")
    before = snapshot(dest)

    broken = tmp_path / "broken"
    broken.mkdir()
    specs = workbook_specs("2022")
    for role in ("codes", "descriptions", "cross_references"):
        (broken / specs[role].file_name).symlink_to(census_root / "2022" / specs[role].file_name)
    (broken / specs["index"].file_name).write_text("<html><body>Service Unavailable</body></html>")

    with pytest.raises(CensusFormatError, match=re.escape(specs["index"].file_name)):
        fetch_workbooks("2022", dest, local_dir=broken)
    assert snapshot(dest) == before  # same files, same bytes, not even rewritten
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_the_four_workbooks_are_switched_as_one_linked_set(
    tmp_path: Path, census_root: Path
) -> None:
    """``census`` links to one complete set; a folder of loose workbooks (the older layout)
    becomes a linked set, and one moved aside by a killed fetch is put back first."""
    dest = tmp_path / "census"
    shutil.copytree(census_root / "2022", dest)  # loose workbooks, as before linked sets
    fetched = fetch_workbooks("2022", dest, local_dir=census_root / "2022")
    target = dest.resolve()
    assert dest.is_symlink() and re.fullmatch(r"census-[0-9a-f]{16}", target.name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["census", target.name]
    assert sorted(p.name for p in target.iterdir()) == sorted(f.path.name for f in fetched)
    fetch_workbooks("2022", dest, local_dir=census_root / "2022")  # same four: same set
    assert dest.resolve() == target and len(list(tmp_path.iterdir())) == 2

    # a fetch killed between moving the old folder aside and linking left no `census`
    finished = subprocess.Popen(["true"])
    finished.wait()
    dest.unlink()
    shutil.rmtree(target)
    moved = tmp_path / f".census.{finished.pid}-0123abcd.legacy"
    shutil.copytree(census_root / "2022", moved)
    broken = tmp_path / "broken"
    shutil.copytree(census_root / "2022", broken)
    spec = workbook_specs("2022")["index"]
    (broken / spec.file_name).write_text("<html><body>Service Unavailable</body></html>")
    with pytest.raises(CensusFormatError, match=re.escape(spec.file_name)):
        fetch_workbooks("2022", dest, local_dir=broken)
    assert not moved.exists() and dest.is_dir() and not dest.is_symlink()  # put back
    assert (dest / spec.file_name).read_bytes() == (
        census_root / "2022" / spec.file_name
    ).read_bytes()


class FakeResponse:
    def __init__(self, status_code: int, body: bytes = b"") -> None:
        self.status_code = status_code
        self.headers: dict = {}
        self.body = body
        self.closed = False

    def iter_content(self, chunk_size: int):
        for start in range(0, len(self.body), chunk_size):
            yield self.body[start : start + chunk_size]

    def close(self) -> None:
        self.closed = True


class FakeSession:
    """Answers each URL from a script: a list of status codes / exceptions, consumed in order."""

    def __init__(self, script, bodies: dict[str, bytes] | None = None) -> None:
        self.script = script
        self.bodies = bodies or {}
        self.calls: list[tuple[str, float, bool]] = []
        self.responses: list[FakeResponse] = []

    def get(self, url: str, timeout: float, stream: bool) -> FakeResponse:
        attempt = sum(1 for u, _, _ in self.calls if u == url)
        self.calls.append((url, timeout, stream))
        outcome = self.script(url, attempt)
        if isinstance(outcome, BaseException):
            raise outcome
        name = url.rsplit("/", 1)[1].replace("%20", " ")
        response = FakeResponse(outcome, self.bodies.get(name, b"") if outcome == 200 else b"")
        self.responses.append(response)
        return response


CONFIG = DownloadConfig(timeout_s=7.0, retries=3, backoff_s=0.5)


def real_bodies(census_root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (census_root / "2022").glob("*.xlsx")}


def test_http_503_then_200_is_retried_with_backoff(tmp_path: Path, census_root: Path) -> None:
    session = FakeSession(lambda url, n: 503 if n == 0 else 200, real_bodies(census_root))
    sleeps: list[float] = []
    fetched = fetch_workbooks(
        "2022", tmp_path / "census", session=session, config=CONFIG, sleep=sleeps.append
    )
    assert sleeps == [0.5] * 4  # one back-off per file
    assert len(session.calls) == 8
    assert all(timeout == 7.0 and stream for _, timeout, stream in session.calls)
    assert all(r.closed for r in session.responses)
    urls = sorted({url for url, _, _ in session.calls})
    assert "https://www.census.gov/naics/2022NAICS/2-6%20digit_2022_Codes.xlsx" in urls
    for item in fetched:
        assert item.source.startswith("https://www.census.gov/naics/2022NAICS/")
        assert item.path.read_bytes() == (census_root / "2022" / item.path.name).read_bytes()


def test_backoff_grows_exponentially_and_429_is_retried(tmp_path: Path) -> None:
    outcomes = [503, 429, 200]
    session = FakeSession(lambda url, n: outcomes[n], {"file.xlsx": b"PK\x03\x04data"})
    sleeps: list[float] = []
    download("https://x/file.xlsx", tmp_path / "file.xlsx", session, CONFIG, sleeps.append)
    assert sleeps == [0.5, 1.0]
    assert (tmp_path / "file.xlsx").read_bytes() == b"PK\x03\x04data"


class DroppingResponse(FakeResponse):
    """Sends the first bytes of the body, then the connection resets."""

    def iter_content(self, chunk_size: int):
        yield self.body[:100]
        raise requests.ConnectionError("Connection reset by peer")


def test_connection_drop_mid_body_is_retried(tmp_path: Path) -> None:
    """BUG (naics_ml/data/download.py ``download``): only ``session.get`` is inside the retry's
    ``except``; a network error while streaming the body (the usual failure of a large download)
    escapes at once as a bare ``requests.ConnectionError`` that names no file, with no retry."""
    body = b"PK\x03\x04" + bytes(500)
    responses = [DroppingResponse(200, body), FakeResponse(200, body)]

    class Session:
        calls = 0

        def get(self, url: str, timeout: float, stream: bool) -> FakeResponse:
            Session.calls += 1
            return responses[Session.calls - 1]

    sleeps: list[float] = []
    download("https://x/file.xlsx", tmp_path / "file.xlsx", Session(), CONFIG, sleeps.append)
    assert Session.calls == 2
    assert sleeps == [0.5]
    assert (tmp_path / "file.xlsx").read_bytes() == body


def test_http_404_names_the_file_and_is_not_retried(tmp_path: Path, census_root: Path) -> None:
    dest = tmp_path / "census"
    fetch_workbooks("2022", dest, local_dir=census_root / "2022")
    before = snapshot(dest)
    index_name = workbook_specs("2022")["index"].file_name

    def script(url: str, attempt: int) -> int:
        return 404 if "Index_File" in url else 200

    session = FakeSession(script, real_bodies(census_root))
    sleeps: list[float] = []
    with pytest.raises(CensusFormatError) as error:
        fetch_workbooks("2022", dest, session=session, config=CONFIG, sleep=sleeps.append)
    assert index_name in str(error.value)
    assert "404" in str(error.value)
    assert sum(1 for url, _, _ in session.calls if "Index_File" in url) == 1
    assert sleeps == []
    assert snapshot(dest) == before


def test_connection_error_every_time_gives_oserror_after_retries(tmp_path: Path) -> None:
    session = FakeSession(lambda url, n: requests.ConnectionError("connection refused"))
    sleeps: list[float] = []
    name = workbook_specs("2022")["codes"].file_name
    with pytest.raises(OSError) as error:
        fetch_workbooks(
            "2022", tmp_path / "census", session=session, config=CONFIG, sleep=sleeps.append
        )
    assert not isinstance(error.value, CensusFormatError)
    assert name in str(error.value)
    assert "3 attempts" in str(error.value)
    assert len(session.calls) == 3
    assert sleeps == [0.5, 1.0]
    assert list(tmp_path.iterdir()) == []  # no census link, no staging folder left


def test_html_page_served_with_200_is_rejected(tmp_path: Path, census_root: Path) -> None:
    bodies = real_bodies(census_root)
    name = workbook_specs("2022")["cross_references"].file_name
    bodies[name] = b"<!doctype html><html><body>Maintenance</body></html>"
    session = FakeSession(lambda url, n: 200, bodies)
    with pytest.raises(CensusFormatError) as error:
        fetch_workbooks("2022", tmp_path / "census", session=session, config=CONFIG)
    assert name in str(error.value)
    assert "HTML" in str(error.value)
    assert list(tmp_path.iterdir()) == []
