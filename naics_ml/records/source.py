"""A folder of business records (``NAICS_RECORDS_DIR``): CSV, Parquet or JSON-lines files, and
``records.yaml`` beside them naming each file's text column and id column::

    text_column: description        # the folder's default
    id_column: id
    files:
      vendors.csv: {text_column: business_activity, id_column: vendor_no}

A file is read in chunks of rows (:func:`read_chunks`), so memory does not grow with the file.
Every error names the file and, where one is at fault, the column or setting.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml

from naics_ml.inference.batch import FORMATS

__all__ = [
    "SETTINGS_FILE",
    "RecordFile",
    "RecordsError",
    "RecordsPart",
    "RecordsSettings",
    "discover_records",
    "files_cursor",
    "plan_parts",
    "read_chunks",
    "watched_files",
]

SETTINGS_FILE = "records.yaml"


class RecordsError(ValueError):
    """A records file, column or setting that cannot be used; the message names it."""


@dataclass(frozen=True)
class RecordsSettings:
    """Which column of a file holds the business text, and which its id."""

    text_column: str
    id_column: str

    @classmethod
    def for_file(cls, folder: Path, name: str) -> RecordsSettings:
        """``name``'s settings from the folder's ``records.yaml`` (its entry over the folder's)."""
        path = Path(folder) / SETTINGS_FILE
        if not path.is_file():
            raise RecordsError(f"{path}: missing; it names each file's text_column and id_column")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise RecordsError(f"{path}: not valid YAML ({error})") from error
        files = data.get("files") or {} if isinstance(data, dict) else None
        if not isinstance(files, dict):
            raise RecordsError(f"{path}: expected a mapping with an optional 'files' mapping")
        merged = {**{k: v for k, v in data.items() if k != "files"}, **(files.get(name) or {})}
        unknown = sorted(set(merged) - {"text_column", "id_column"})
        if unknown:
            raise RecordsError(f"{path}: unknown setting(s) {unknown} for {name}")
        missing = [k for k in ("text_column", "id_column") if not merged.get(k)]
        if missing:
            raise RecordsError(f"{path}: no {' or '.join(missing)} for {name}")
        return cls(str(merged["text_column"]), str(merged["id_column"]))


@dataclass(frozen=True)
class RecordFile:
    """One records file: its name (the partition key), path, content digest, and the size and
    modification time the digest was taken at."""

    name: str
    path: Path
    digest: str
    size: int
    mtime_ns: int


def discover_records(
    folder: Path | str, known: dict[str, RecordFile] | None = None
) -> list[RecordFile]:
    """The records files of ``folder`` (known suffixes, not hidden), by name. A file whose size
    and modification time equal its entry in ``known`` keeps that digest unread (a sensor
    lists the folder every minute)."""
    found = []
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in FORMATS:
            stat = path.stat()
            seen = (known or {}).get(path.name)
            if seen is not None and (seen.size, seen.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
                digest = seen.digest
            else:
                with path.open("rb") as handle:
                    digest = hashlib.file_digest(handle, "sha256").hexdigest()
            found.append(RecordFile(path.name, path, digest, stat.st_size, stat.st_mtime_ns))
    return found


def watched_files(
    folder: Path, cursor: str | None
) -> tuple[dict[str, RecordFile], dict[str, RecordFile]]:
    """(the files of ``folder`` now, the files a sensor's ``cursor`` remembers), by name; a file
    unchanged since the cursor is not read again (:func:`discover_records`)."""
    seen = {  # name -> [digest, size, mtime_ns] when it was last read
        name: RecordFile(name, Path(folder) / name, *entry)
        for name, entry in (json.loads(cursor) if cursor else {}).items()
    }
    return {f.name: f for f in discover_records(folder, seen)}, seen


def files_cursor(files: Iterable[RecordFile]) -> str:
    """The sensor cursor that remembers ``files`` (read back by :func:`watched_files`)."""
    return json.dumps({f.name: [f.digest, f.size, f.mtime_ns] for f in files})


def read_chunks(
    path: Path, settings: RecordsSettings, chunk_rows: int = 10_000
) -> Iterator[pl.DataFrame]:
    """The file's rows in chunks of at most ``chunk_rows``, every column as read (CSV as text);
    the columns are checked before the first chunk, and an empty file is an error."""
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise RecordsError(f"{path}: unknown format; use one of {', '.join(sorted(FORMATS))}")
    chunks = {"csv": _csv_chunks, "parquet": _parquet_chunks, "jsonl": _jsonl_chunks}[kind]
    rows = 0
    try:
        for chunk in chunks(path, chunk_rows):
            if rows == 0:
                _check_columns(path, chunk.columns, settings)
            rows += chunk.height
            if chunk.height:
                yield chunk
    except RecordsError:
        raise
    except Exception as error:  # polars and pyarrow raise several kinds for a malformed file
        raise RecordsError(f"{path}: cannot be read as {kind} ({error})") from error
    if rows == 0:
        raise RecordsError(f"{path}: the file has no rows")


@dataclass(frozen=True)
class RecordsPart:
    """Rows ``start`` up to ``stop`` (the end when None) of a records file: what one step codes."""

    path: Path
    settings: RecordsSettings
    start: int = 0
    stop: int | None = None

    def chunks(self, chunk_rows: int) -> Iterator[pl.DataFrame]:
        """This part's rows in chunks of at most ``chunk_rows``, in file order."""
        offset = 0
        for chunk in read_chunks(self.path, self.settings, chunk_rows):
            low = max(self.start - offset, 0)
            high = chunk.height if self.stop is None else min(self.stop - offset, chunk.height)
            offset += chunk.height
            if high > low:
                yield chunk.slice(low, high - low)
            if self.stop is not None and offset >= self.stop:
                return


def plan_parts(
    path: Path, settings: RecordsSettings, part_rows: int, chunk_rows: int
) -> list[RecordsPart]:
    """The file cut into parts of ``part_rows`` rows (the last one shorter), after reading it
    through once: its columns are checked and an empty file is an error before any coding.
    ``part_rows`` must be a multiple of ``chunk_rows``: then the parts are coded in the very
    chunks a whole file is, and one thread gives the same bits either way."""
    if chunk_rows < 1 or part_rows < 1 or part_rows % chunk_rows:
        raise RecordsError(
            f"part_rows ({part_rows}) must be a positive multiple of chunk_rows ({chunk_rows})"
        )
    rows = sum(chunk.height for chunk in read_chunks(path, settings, chunk_rows))
    return [
        RecordsPart(Path(path), settings, start, min(start + part_rows, rows))
        for start in range(0, rows, part_rows)
    ]


def _check_columns(path: Path, columns: list[str], settings: RecordsSettings) -> None:
    for setting in ("text_column", "id_column"):
        column = getattr(settings, setting)
        if column not in columns:
            raise RecordsError(
                f"{path}: no column {column!r} ({setting} in {SETTINGS_FILE}; "
                f"columns: {', '.join(columns)})"
            )


def _csv_chunks(path: Path, chunk_rows: int) -> Iterator[pl.DataFrame]:
    """Every column as text (ids keep their leading zeros), streamed block by block."""
    with path.open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle), [])
    strings = pacsv.ConvertOptions(column_types=dict.fromkeys(header, pa.string()))
    pending: list[pl.DataFrame] = []
    held = 0
    for batch in pacsv.open_csv(path, convert_options=strings):
        pending.append(pl.from_arrow(batch))
        held += batch.num_rows
        while held >= chunk_rows:
            frame = pl.concat(pending)
            yield frame.slice(0, chunk_rows)
            pending, held = [frame.slice(chunk_rows)], frame.height - chunk_rows
    if held:
        yield pl.concat(pending)


def _parquet_chunks(path: Path, chunk_rows: int) -> Iterator[pl.DataFrame]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
        yield pl.from_arrow(batch)


def _jsonl_chunks(path: Path, chunk_rows: int) -> Iterator[pl.DataFrame]:
    lines: list[bytes] = []
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                lines.append(line)
            if len(lines) == chunk_rows:
                yield pl.read_ndjson(io.BytesIO(b"".join(lines)))
                lines = []
    if lines:
        yield pl.read_ndjson(io.BytesIO(b"".join(lines)))
