"""Getting the Census workbooks: a local folder, or HTTP with timeout, retries and back-off.

Every file lands in a staging folder first and is validated (xlsx bytes, sheet, columns, codes;
then the four together) before anything of the destination is replaced, so a bad download never
damages what is already there.

The four are replaced as one set (``naics_ml.linked_sets``): ``<revision>/census`` links to a
folder ``census-<digest of the four checksums>``, and a kill at any point leaves it on the old
set or on the new one, never two workbooks of each.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from naics_ml.data.census import (
    CensusFormatError,
    WorkbookSpec,
    read_census,
    read_workbook,
    validate_revision,
    workbook_specs,
)
from naics_ml.io import disk_full_error
from naics_ml.linked_sets import prepare_set, publish_set, staging_folder


class HttpResponse(Protocol):
    status_code: int
    headers: dict

    def iter_content(self, chunk_size: int) -> object: ...
    def close(self) -> None: ...


class HttpSession(Protocol):
    def get(self, url: str, timeout: float, stream: bool) -> HttpResponse: ...


@dataclass(frozen=True)
class DownloadConfig:
    """HTTP behaviour: per-request timeout, attempts, exponential back-off base."""

    timeout_s: float = 60.0
    retries: int = 3
    backoff_s: float = 2.0

    def __post_init__(self) -> None:
        if self.retries < 1 or self.timeout_s <= 0 or self.backoff_s < 0:
            raise ValueError(f"invalid DownloadConfig {self}")


@dataclass(frozen=True)
class FetchedFile:
    """One workbook in its final place, with where it came from."""

    role: str
    path: Path
    source: str
    bytes: int
    sha256: str


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def download(
    url: str,
    dest: Path,
    session: HttpSession,
    config: DownloadConfig,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """GET ``url`` into ``dest``; retries network errors, 5xx and 429 with back-off."""
    import requests

    last_error: Exception | None = None
    for attempt in range(config.retries):
        if attempt:
            sleep(config.backoff_s * 2 ** (attempt - 1))
        try:
            response = session.get(url, timeout=config.timeout_s, stream=True)
        except (requests.ConnectionError, requests.Timeout, OSError) as exc:
            last_error = exc
            continue
        try:
            if response.status_code == 429 or response.status_code >= 500:
                last_error = OSError(f"HTTP {response.status_code}")
                continue
            if response.status_code != 200:
                raise CensusFormatError(f"{dest.name}: HTTP {response.status_code} from {url}")
            with open(dest, "wb") as handle:
                for chunk in response.iter_content(chunk_size=1 << 16):
                    handle.write(chunk)
            return
        except (requests.ConnectionError, requests.Timeout) as exc:  # dropped mid-body
            last_error = exc
        finally:
            response.close()
    raise OSError(f"{dest.name}: download failed after {config.retries} attempts ({last_error})")


def fetch_workbooks(
    revision: str,
    dest_dir: Path,
    local_dir: Path | None = None,
    session: HttpSession | None = None,
    config: DownloadConfig = DownloadConfig(),
    sleep: Callable[[float], None] = time.sleep,
) -> list[FetchedFile]:
    """Copy (``local_dir``) or download the four workbooks of ``revision`` into ``dest_dir``.

    Each file is checked alone (bytes, sheet, columns, a code on every row), then the four
    together (codes well-formed with parents and descriptions; index and cross-reference rows
    naming known codes); only then are the files of ``dest_dir`` replaced."""
    validate_revision(revision)
    dest_dir = Path(dest_dir)
    prepare_set(dest_dir)  # what a killed fetch left (naics_ml.linked_sets)
    if local_dir is None and session is None:
        import requests

        session = requests.Session()

    def get(url: str, target: Path) -> None:
        download(url, target, session, config, sleep)

    staging = staging_folder(dest_dir)
    try:
        fetched = [
            _stage_workbook(spec, revision, staging, local_dir, get)
            for spec in workbook_specs(revision).values()
        ]
        check_census_contents(staging, revision)
        digest = hashlib.sha256("".join(f.sha256 for f in fetched).encode()).hexdigest()
        publish_set(staging, dest_dir, digest[:16])  # all four are valid: only now switch
        return [
            FetchedFile(f.role, dest_dir / f.path.name, f.source, f.bytes, f.sha256)
            for f in fetched
        ]
    except OSError as error:
        full = disk_full_error(error, staging)  # while the staged files still take their space
        if full is None or full is error:
            raise
        raise full from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _stage_workbook(
    spec: WorkbookSpec,
    revision: str,
    staging: Path,
    local_dir: Path | None,
    get: Callable[[str, Path], None],
) -> FetchedFile:
    """One workbook copied or downloaded into ``staging``, validated alone and flushed to disk."""
    target = staging / spec.file_name
    if local_dir is not None:
        source = Path(local_dir) / spec.file_name
        if not source.is_file():
            raise CensusFormatError(f"{spec.file_name}: not found in {local_dir}")
        shutil.copyfile(source, target)
        origin = str(source.resolve())
    else:
        origin = spec.url(revision)
        get(origin, target)
    read_workbook(target, spec)  # validates bytes, sheet, columns and codes
    with open(target, "rb") as handle:
        os.fsync(handle.fileno())  # on disk before it replaces anything
    return FetchedFile(spec.role, target, origin, target.stat().st_size, sha256_of(target))


def check_census_contents(folder: Path, revision: str) -> None:
    """The four workbooks of ``folder`` agree: what building the code table and splitting the
    index would reject is rejected here, before anything is replaced."""
    from naics_ml.data.codes import build_code_table
    from naics_ml.data.index_split import check_index_codes

    tables = read_census(folder, revision)
    check_index_codes(tables.index, build_code_table(tables))


def source_checksums(
    revision: str,
    local_dir: Path | None = None,
    session: HttpSession | None = None,
    config: DownloadConfig = DownloadConfig(),
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, str]:
    """SHA-256 per role of the workbooks the source offers now.

    They are fetched and validated exactly as ``fetch_workbooks`` does, but into a temporary
    folder that is then deleted: comparing with a materialization replaces nothing under storage/,
    and an invalid file at the source raises here instead of becoming a failing run.
    """
    with tempfile.TemporaryDirectory(prefix="naics-checksums-") as tmp:
        fetched = fetch_workbooks(revision, Path(tmp) / "census", local_dir, session, config, sleep)
    return {item.role: item.sha256 for item in fetched}


def local_revisions(local_dir: Path) -> list[str]:
    """Revisions (four-digit folders) present under a folder laid out like shared/census/."""
    found = []
    for child in sorted(Path(local_dir).glob("*")):
        try:
            validate_revision(child.name)
        except ValueError:
            continue
        if child.is_dir():
            found.append(child.name)
    return found


def probe_revisions(known: list[str], timeout_s: float, session: object | None = None) -> list[str]:
    """Known revisions plus later five-yearly releases the Census server has a codes file for."""
    import requests

    session = session or requests.Session()
    found = sorted(known)
    year = max((int(r) for r in known), default=2017) + 5
    while True:
        url = workbook_specs(str(year))["codes"].url(str(year))
        try:
            response = session.head(url, timeout=timeout_s, allow_redirects=True)
        except requests.RequestException:
            return found
        kind = response.headers.get("content-type", "")
        if response.status_code != 200 or "html" in kind:
            return found
        found.append(str(year))
        year += 5
