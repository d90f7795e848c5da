"""Resources: where the workbooks come from, and where artifacts go under storage/."""

from __future__ import annotations

import os
import re
import socket
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
from pydantic import Field

from naics_ml.data.realtext import EVAL_FILE, VAL_FILE, RealTextSplit
from naics_ml.revision_folder import RevisionFolder, plain_file_name, safe_revision


def project_root() -> Path:
    """DAGSTER_HOME is the project root by convention (dagster.yaml lives there)."""
    return Path(os.environ.get("DAGSTER_HOME") or Path.cwd()).resolve()


class CensusSource(dg.ConfigurableResource):
    """The Census workbooks: a local folder laid out like shared/census/<YEAR>/, else the web."""

    local_dir: str | None = Field(
        default=None, description="Folder with <YEAR>/ subfolders; NAICS_CENSUS_DIR by default."
    )
    timeout_s: float = 60.0
    retries: int = 3
    backoff_s: float = 2.0

    def revision_dir(self, revision: str) -> Path | None:
        safe_revision(revision)  # a bad key fails even when the web is the source
        if not self.local_dir:
            return None
        return Path(self.local_dir).expanduser().resolve() / revision

    def fetch(self, revision: str, dest_dir: Path) -> list:
        from naics_ml.data.download import DownloadConfig, fetch_workbooks

        config = DownloadConfig(self.timeout_s, self.retries, self.backoff_s)
        return fetch_workbooks(revision, dest_dir, self.revision_dir(revision), config=config)

    def available_revisions(self, known: list[str]) -> list[str]:
        """Revisions on offer: local subfolders, or later five-yearly Census releases."""
        from naics_ml.data.download import local_revisions, probe_revisions

        if self.local_dir:
            return local_revisions(Path(self.local_dir).expanduser())
        return probe_revisions(known, self.timeout_s)


class RealTextSource(dg.ConfigurableResource):
    """Labelled real firm descriptions (``naics_ml.data.realtext``): an evaluation-only file and a
    free-to-use file whose held-out part validates and whose rest trains the query path."""

    local_dir: str | None = Field(
        default=None, description="Folder of the labelled CSVs; NAICS_REALTEXT_DIR by default."
    )
    eval_file: str = Field(default=EVAL_FILE, description="Never trained on.")
    val_file: str = Field(default=VAL_FILE, description="Split train/val.")
    val_share: float = Field(
        default=RealTextSplit().validation, description="Share of val_file held out."
    )
    train_on_val_file: bool = Field(
        default=True,
        description="Train the query path on val_file's training part; off to measure what "
        "reviewed labels alone bring (benchmarks/labels_loop.py).",
    )

    def path(self, name: str) -> Path | None:
        """The file, or None when no folder is set or the file is absent (then skipped)."""
        plain_file_name("RealTextSource file name", name)
        if not self.local_dir:
            return None
        path = Path(self.local_dir).expanduser() / name
        return path if path.is_file() else None

    def load(self, six_digit_codes: list[str]) -> dict[str, object]:
        """``eval`` (the evaluation set), ``val`` and ``train`` frames; a missing file -> None."""
        from naics_ml.data.realtext import load_labelled_texts, split_labelled_texts

        eval_name = plain_file_name("RealTextSource.eval_file", self.eval_file)
        val_name = plain_file_name("RealTextSource.val_file", self.val_file)
        eval_path, val_path = self.path(eval_name), self.path(val_name)
        out: dict[str, object] = {"eval": None, "val": None, "train": None}
        if eval_path is not None:
            out["eval"] = load_labelled_texts(eval_path, six_digit_codes)
        if val_path is not None:
            split = RealTextSplit(validation=self.val_share)
            out["train"], out["val"] = split_labelled_texts(
                load_labelled_texts(val_path, six_digit_codes), split
            )
            if not self.train_on_val_file:
                out["train"] = None
        return out


class RecordsSource(dg.ConfigurableResource):
    """The users' business records (``naics_ml.records.source``): a folder of CSV, Parquet and
    JSON-lines files with a ``records.yaml`` naming their text and id columns."""

    local_dir: str | None = Field(
        default=None, description="Folder of the records files; NAICS_RECORDS_DIR by default."
    )
    labels_dir: str | None = Field(
        default=None,
        description="Folder of reviewed files (review files with reviewed_code filled in) that "
        "the stages train on; NAICS_LABELS_DIR by default.",
    )
    labels_validation: float = Field(
        default=0.2, description="Share of the reviewed labels held out to validate."
    )

    def labels_folder(self) -> Path | None:
        """The labels folder, or None when none is set (no reviewed labels then)."""
        return Path(self.labels_dir).expanduser() if self.labels_dir else None

    def folder(self) -> Path | None:
        """The folder, or None when none is set (the records sensor then skips)."""
        return Path(self.local_dir).expanduser() if self.local_dir else None

    def file(self, name: str) -> Path:
        """The records file ``name`` (a plain file name in the folder)."""
        folder = self.folder()
        if folder is None:
            raise ValueError("RecordsSource.local_dir (NAICS_RECORDS_DIR) is not set")
        return folder / plain_file_name("records file", name)


class ArtifactStore(dg.ConfigurableResource):
    """Every file an asset writes lives under ``root/<revision>/`` (storage/artifacts)."""

    root: str = Field(default="", description="Artifact root; storage/artifacts when empty.")

    @classmethod
    def from_env(cls) -> ArtifactStore:
        """The store the code location uses: ``NAICS_ARTIFACTS_DIR``, else storage/artifacts."""
        return cls(root=os.environ.get("NAICS_ARTIFACTS_DIR", ""))

    def base(self) -> Path:
        """The root folder. A URL is refused: the assets write with POSIX file operations (atomic
        renames, folder swaps), so an object store must be mounted as a filesystem."""
        if "://" in self.root:
            raise ValueError(
                "ArtifactStore.root (NAICS_ARTIFACTS_DIR) must be a filesystem path, e.g. a "
                f"mounted shared volume; object-store URLs are not supported, got {self.root!r}"
            )
        return Path(self.root) if self.root else project_root() / "storage" / "artifacts"

    def revision(self, revision: str) -> RevisionFolder:
        """The revision's folder (``naics_ml.revision_folder``), created: the key is checked
        before anything is made."""
        folder = RevisionFolder.under(self.base(), revision)
        folder.path.mkdir(parents=True, exist_ok=True)
        return folder

    def lock(self, context: dg.AssetExecutionContext) -> AbstractContextManager[Path]:
        """Held while an asset writes one partition (``<root>/.locks/<revision>/<asset>.lock``):
        a second materialization of the same asset and partition fails at once with a message
        naming the lock and its holder (pid, host, Dagster run, start) instead of writing the
        same files (``naics_ml.io.exclusive_lock``)."""
        from naics_ml.io import exclusive_lock

        key = context.partition_key
        name = context.asset_key.to_user_string()
        if isinstance(key, dg.MultiPartitionKey):  # a records file of a revision
            parts = key.keys_by_dimension
            key = parts["revision"]
            name = f"{name}.{plain_file_name('records file', parts['records_file'])}"
        revision = safe_revision(key)
        started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        holder = (
            f"pid {os.getpid()} (parent {os.getppid()}) on {socket.gethostname()} "
            f"(Dagster run {context.run.run_id}, {name} for {revision}, since {started})"
        )
        path = self.base() / ".locks" / revision / f"{name}.lock"
        return exclusive_lock(path, holder, lambda left: fail_abandoned_run(context, left))


HOLDER = re.compile(r"pid (\d+) \(parent (\d+)\) on (\S+) \(Dagster run ([0-9a-f-]+),")


def fail_abandoned_run(context: dg.AssetExecutionContext, left: str) -> None:
    """Mark FAILURE the Dagster run whose step was killed holding this lock (``left``, the
    holder text it left), when that step and its parent process are gone from this machine
    and the run still reads as in progress: a killed ``dagster asset materialize`` cannot
    report its own end, and its run would otherwise stay STARTED in the run list for ever."""
    from naics_ml.io import is_running

    match = HOLDER.match(left)
    if match is None or match[3] != socket.gethostname() or match[4] == context.run.run_id:
        return
    if is_running(int(match[1])) or is_running(int(match[2])):
        return  # only the step died: its run, still alive, reports the failure itself
    run = context.instance.get_run_by_id(match[4])
    if run is None or run.status not in (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING):
        return
    message = f"killed: its step died holding {context.asset_key.to_user_string()}'s lock ({left})"
    context.instance.report_run_failed(run, message=message)
    context.log.warning(f"marked run {run.run_id} FAILURE: {message}")
