"""The folder of one NAICS revision, and the one place its layout is written down.

Every file the pipeline makes for a revision lives in ``<artifacts>/<revision>/``
(``storage/artifacts/2022/`` by default)::

    census/                        the Census workbooks, as fetched
    naics_index_entries.parquet    the index entries, with their train/validation/test split
    naics_codes.parquet            the code table
    naics_distances.parquet        tree distances of every code pair
    triplets/                      the triplet shards (sector=<NN>/part-<i>.parquet)
    prefix_cache/                  the frozen base model's prefix, shared by the stages
    baselines/                     cached baseline metrics and level heads, shared by the stages
    models/<stage>/                a stage folder (naics_ml.stage_folder.StageFolder)
    models/serving.json            which stage serves predict
    naics_embeddings.parquet       every code's coordinates
    business_codes/<file>.parquet  a user's records file, coded by the served stage
    reviewed_labels.parquet        reviewed records, checked and split, that the stages train on
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from naics_ml.data.census import validate_revision
from naics_ml.stage_folder import SERVING_FILE, StageFolder, check_stage_name

__all__ = ["RevisionFolder", "plain_file_name", "revisions", "safe_revision"]


def safe_revision(revision: str) -> str:
    """A revision as one path component under a root: ``validate_revision`` (four digits, no
    separator) and ASCII, since its ``\\d`` also takes Arabic-Indic digits: a look-alike '2022'
    would get a second folder."""
    validate_revision(revision)
    if not revision.isascii():
        raise ValueError(f"NAICS revision must be a four-digit year like '2022', got {revision!r}")
    return revision


def plain_file_name(setting: str, name: str) -> str:
    """A file name configured for a folder must stay in it: no separator, '.', '..' or NUL."""
    if name in ("", ".", "..") or "\x00" in name or Path(name).name != name:
        raise ValueError(f"{setting} must be a plain file name, got {name!r}")
    return name


@dataclass(frozen=True)
class RevisionFolder:
    """Paths of a revision folder's files; ``RevisionFolder.under(root, "2022")`` checks the
    revision before it names anything."""

    path: Path

    CENSUS: ClassVar[str] = "census"
    ENTRIES: ClassVar[str] = "naics_index_entries.parquet"
    CODES: ClassVar[str] = "naics_codes.parquet"
    DISTANCES: ClassVar[str] = "naics_distances.parquet"
    TRIPLETS: ClassVar[str] = "triplets"
    PREFIX_CACHE: ClassVar[str] = "prefix_cache"
    BASELINES: ClassVar[str] = "baselines"
    MODELS: ClassVar[str] = "models"
    EMBEDDINGS: ClassVar[str] = "naics_embeddings.parquet"
    BUSINESS_CODES: ClassVar[str] = "business_codes"
    REVIEWED_LABELS: ClassVar[str] = "reviewed_labels.parquet"

    @classmethod
    def under(cls, root: Path | str, revision: str) -> RevisionFolder:
        return cls(Path(root) / safe_revision(revision))

    @property
    def revision(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    census = property(lambda self: self.file(self.CENSUS))
    entries = property(lambda self: self.file(self.ENTRIES))
    codes = property(lambda self: self.file(self.CODES))
    distances = property(lambda self: self.file(self.DISTANCES))
    triplets = property(lambda self: self.file(self.TRIPLETS))
    prefix_cache = property(lambda self: self.file(self.PREFIX_CACHE))
    baselines = property(lambda self: self.file(self.BASELINES))
    models = property(lambda self: self.file(self.MODELS))
    embeddings = property(lambda self: self.file(self.EMBEDDINGS))
    serving = property(lambda self: self.models / SERVING_FILE)
    reviewed_labels = property(lambda self: self.file(self.REVIEWED_LABELS))

    def business_codes(self, records_file: str) -> Path:
        """Where the codes of the records file ``records_file`` (a plain file name) go."""
        name = plain_file_name("records file", records_file)
        return self.file(self.BUSINESS_CODES) / f"{name}.parquet"

    def stage(self, name: str) -> StageFolder:
        """The folder of stage ``name`` (checked to be one path component)."""
        return StageFolder(self.models / check_stage_name(name))


def revisions(root: Path | str) -> list[str]:
    """The revision folders under an artifacts root, newest first."""
    found = (p.name for p in Path(root).glob("[0-9][0-9][0-9][0-9]") if p.is_dir())
    return sorted(found, reverse=True)
