"""``business_codes``: a user's records file coded by the served model of a revision.

Partitioned by (revision, records file): ``records_sensor`` adds each new or changed file of
``NAICS_RECORDS_DIR`` as a partition and requests its run for every revision that has a served
stage; a removed file is reported in the sensor's log and its codes are kept. The asset is a
graph of steps: ``cut_file`` reads the file through once and cuts it into parts of
``part_rows`` rows, one ``code_part`` step per part codes it in chunks (``naics_ml.records``;
the executor runs the parts side by side: processes here, pods with ``k8s_job_executor``), and
``join`` writes them, in file order, as
``storage/artifacts/<revision>/business_codes/<file>.parquet``, atomically: the previous codes
stay readable until the new ones are complete, and a re-coding reports what changed. A coded
file is coded again when its revision's ``naics_embeddings`` is materialized again (which
records the served stage; automation condition ``RECODE``). Two checks: every code exists in
the revision (an error), and the share of rows below the confidence threshold stays under a
limit (a warning).
"""

import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from naics_assets.partitions import revision_partitions
from naics_assets.resources import ArtifactStore, RecordsSource

if TYPE_CHECKING:
    from naics_ml.records.changes import ChangeReport
    from naics_ml.records.source import RecordsPart
    from naics_ml.revision_folder import RevisionFolder

records_partitions = dg.DynamicPartitionsDefinition(name="records_file")
business_partitions = dg.MultiPartitionsDefinition(
    {"revision": revision_partitions, "records_file": records_partitions}
)
CHECKS = [
    dg.AssetCheckSpec(
        "codes_exist",
        asset="business_codes",
        description="Every code is one of the revision's six-digit codes.",
    ),
    dg.AssetCheckSpec(
        "low_confidence_share",
        asset="business_codes",
        description="The share of "
        "rows below the confidence threshold stays under the configured limit.",
    ),
]


class BusinessCodesConfig(dg.Config):
    chunk_rows: int = Field(default=5_000, description="Rows read and coded at once.")
    part_rows: int = Field(
        default=50_000,
        description="A file with more rows is coded in parts of this many rows (a multiple of "
        "chunk_rows), each its own step: the executor runs them side by side (processes here, "
        "pods on Kubernetes).",
    )
    precision: str = Field(
        default="auto",
        description="As naics-gemini classify: auto (bfloat16 where the CPU has it natively), "
        "float32 (the stage's own evaluation) or bfloat16.",
    )
    torch_threads: int = Field(
        default=0,
        description="CPU threads of each coding step; 0: all cores. With several steps at once, "
        "cores / steps.",
    )
    min_confidence: float = Field(
        default=0.5, description="Below it a row needs review; also the fallback's threshold."
    )
    max_low_confidence_share: float = Field(
        default=0.5, description="The low_confidence_share check warns above this share."
    )


@dg.config_mapping
def every_step(config: BusinessCodesConfig) -> dict[str, object]:
    """One config for the asset, handed to each of its steps."""
    return {op: {"config": config.model_dump()} for op in ("cut_file", "code_part", "join")}


# re-code a coded file when its revision's naics_embeddings is materialized again (it records the
# served stage); a file never coded is left to records_sensor
RECODE = (
    dg.AutomationCondition.any_deps_updated()
    & ~dg.AutomationCondition.missing()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("re-code when the revision's served model changes")
with warnings.catch_warnings():  # beta in Dagster 1.13; the mapping is what we need
    warnings.simplefilter("ignore", dg.BetaWarning)
    BY_REVISION = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="revision")


@dataclass(frozen=True)
class CodingStep:
    """One part of a records file and where its codes go, with the served stage fixed when the
    run began (every part is coded by the same model)."""

    part: "RecordsPart"
    stage: Path
    out: Path


@dg.op(ins={"naics_embeddings": dg.In(dg.Nothing)}, out=dg.DynamicOut(CodingStep))
def cut_file(
    context: dg.OpExecutionContext,
    config: BusinessCodesConfig,
    store: ArtifactStore,
    records: RecordsSource,
) -> Iterator[dg.DynamicOutput[CodingStep]]:
    """Read the file through once (its columns checked) and cut it into parts of
    ``part_rows``; each becomes a ``code_part`` step."""
    from naics_ml.inference.serving import served_stage
    from naics_ml.records.source import RecordsError, RecordsSettings, plan_parts

    revision, name = file_of(context)
    path = records.file(name)
    try:
        stage = served_stage(store.base(), revision)
        settings = RecordsSettings.for_file(path.parent, name)
        parts = plan_parts(path, settings, config.part_rows, config.chunk_rows)
    except (RecordsError, FileNotFoundError) as error:
        raise dg.Failure(str(error)) from error
    work = store.revision(revision).business_codes(name).parent / f".{name}.parts"
    context.log.info(f"{name}: {parts[-1].stop:,} rows in {len(parts)} part(s), by {stage.name}")
    for part in parts:
        out = work / context.run.run_id / f"{part.start:012d}.parquet"
        yield dg.DynamicOutput(CodingStep(part, stage, out), mapping_key=f"rows_{part.start}")


@dg.op
def code_part(config: BusinessCodesConfig, step: CodingStep) -> CodingStep:
    """Code one part of the file into its own Parquet file (and review file)."""
    import torch

    from naics_ml.inference.classifier import Classifier
    from naics_ml.records.coding import CodingConfig, code_records
    from naics_ml.records.source import RecordsError

    classifier = Classifier.from_checkpoint(step.stage, precision=config.precision)
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    coding = CodingConfig(config.chunk_rows, config.min_confidence)
    try:
        code_records(classifier.predict, step.part, step.out, coding)
    except RecordsError as error:
        raise dg.Failure(str(error)) from error
    return step


@dg.op(
    out={"result": dg.Out(dg.Nothing)}
    | {c.get_python_identifier(): dg.Out(dg.Nothing) for c in CHECKS}
)
def join(
    context: dg.OpExecutionContext,
    config: BusinessCodesConfig,
    store: ArtifactStore,
    steps: list[CodingStep],
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Put the parts together in file order as the file's codes (atomically; the previous codes
    stay readable until then), report what changed and check the codes."""
    import polars as pl

    from naics_ml.inference.serving import stage_digest
    from naics_ml.records.changes import change_report
    from naics_ml.records.coding import join_parts, review_path, summarize

    revision, name = file_of(context)
    folder = store.revision(revision)
    steps = sorted(steps, key=lambda step: step.part.start)
    parts, settings, stage = [s.out for s in steps], steps[0].part.settings, steps[0].stage
    with store.lock(context):
        out = folder.business_codes(name)
        with previous_codes(out) as previous:
            join_parts(parts, out)
            changes = previous and change_report(previous, out, settings.id_column)
    shutil.rmtree(parts[0].parent, ignore_errors=True)  # this run's parts
    with suppress(OSError):  # kept while another run's parts are there
        parts[0].parent.parent.rmdir()
    summary = summarize(out, config.min_confidence)
    known = set(pl.read_parquet(folder.codes).filter(pl.col("level") == 6)["code"])
    yield dg.Output(
        None,
        "result",
        metadata={
            "path": dg.MetadataValue.path(str(out)),
            "dagster/row_count": summary.rows,
            "parts": len(parts),
            "low_confidence_share": summary.low_confidence_share,
            "rows_without_text": summary.errors,
            "codes_by_sector": dg.MetadataValue.md(sector_table(summary.by_sector)),
            "model": f"{stage.name} ({stage_digest(stage)[:12]})",
            "text_column": settings.text_column,
            "review_file": dg.MetadataValue.path(str(review_path(out))),
            **change_metadata(changes),
            **agreement_metadata(store, folder, name, settings.id_column),
        },
    )
    yield from check_results(sorted(summary.codes - known), summary.low_confidence_share, config)


def check_results(
    unknown: list[str], share: float, config: BusinessCodesConfig
) -> Iterator[dg.AssetCheckResult]:
    """``codes_exist`` (an error) and ``low_confidence_share`` (a warning)."""
    yield dg.AssetCheckResult(
        check_name="codes_exist",
        passed=not unknown,
        metadata={"unknown_codes": dg.MetadataValue.json(unknown[:20])},
    )
    yield dg.AssetCheckResult(
        check_name="low_confidence_share",
        passed=share <= config.max_low_confidence_share,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"share": share, "limit": config.max_low_confidence_share},
    )


@dg.graph_asset(
    partitions_def=business_partitions,
    ins={
        "naics_embeddings": dg.AssetIn(
            "naics_embeddings", partition_mapping=BY_REVISION, dagster_type=dg.Nothing
        )
    },
    automation_condition=RECODE,
    group_name="records",
    kinds={"pytorch", "parquet"},
    check_specs=CHECKS,
    config=every_step,
)
def business_codes(naics_embeddings: None) -> dict[str, object]:
    """Every row of the records file with its code, title, calibrated confidence, fallback
    code, top-5 candidates and evidence, by the revision's served stage; a file of more than
    ``part_rows`` rows is coded in parts, side by side."""
    coded = cut_file(naics_embeddings).map(code_part).collect()
    return join(coded)


def file_of(context: dg.OpExecutionContext) -> tuple[str, str]:
    """(revision, records file) of the partition being coded."""
    keys = context.partition_key.keys_by_dimension
    return keys["revision"], keys["records_file"]


@contextmanager
def previous_codes(out: Path) -> Iterator[Path | None]:
    """The codes ``out`` held before this run, hard-linked aside for the change report (the
    rename that installs the new codes leaves the link intact); None on a first run."""
    if not out.is_file():
        yield None
        return
    previous = out.with_name(f".{out.name}.previous")
    previous.unlink(missing_ok=True)
    os.link(out, previous)
    try:
        yield previous
    finally:
        previous.unlink(missing_ok=True)


def change_metadata(changes: "ChangeReport | None") -> dict[str, object]:
    """The change report as metadata: counts that sum to the rows, transitions, by sector."""
    if changes is None:
        return {"rows_changed": 0, "changes": "first coding of this file"}
    by_sector = "\n".join(
        ["| sector | changed rows |", "|---|---|"]
        + [f"| {s} | {n:,} |" for s, n in changes.by_sector.iter_rows()]
    )
    return {
        "rows_changed": changes.changed,
        "rows_unchanged": changes.unchanged,
        "rows_new": changes.new,
        "changes": dg.MetadataValue.md(changes.markdown()),
        "changes_by_sector": dg.MetadataValue.md(by_sector),
    }


def agreement_metadata(
    store: ArtifactStore, folder: "RevisionFolder", name: str, id_column: str
) -> dict[str, object]:
    """For each other revision that coded this file too: over the records coded here with a
    code that is the same (code and title) in both revisions, how often the two codes agree."""
    import polars as pl

    from naics_ml.records.revisions import revision_agreement, stable_codes
    from naics_ml.revision_folder import RevisionFolder, revisions

    out: dict[str, object] = {}
    for revision in revisions(store.base()):
        other = RevisionFolder.under(store.base(), revision)
        if revision == folder.revision or not other.business_codes(name).is_file():
            continue
        stable = stable_codes(pl.read_parquet(folder.codes), pl.read_parquet(other.codes))
        coded = folder.business_codes(name), other.business_codes(name)
        agreement = revision_agreement(*coded, stable, id_column)
        out[f"agreement_with_{revision}"] = dg.MetadataValue.json(
            {**agreement, "stable_codes": stable.height}
        )
    return out


def sector_table(by_sector: dict[str, int]) -> str:
    """Markdown: rows per sector, largest first, with a bar."""
    total = sum(by_sector.values()) or 1
    rows = ["| sector | rows | share | |", "|---|---|---|---|"]
    for sector, n in sorted(by_sector.items(), key=lambda item: (-item[1], item[0])):
        rows.append(f"| {sector} | {n:,} | {n / total:.1%} | {'█' * round(20 * n / total)} |")
    return "\n".join(rows)


records_job = dg.define_asset_job(
    "business_codes_job",
    selection=[business_codes],
    description="Code one records file with one revision's served stage.",
)


@dg.sensor(job=records_job, minimum_interval_seconds=60)
def records_sensor(
    context: dg.SensorEvaluationContext, records: RecordsSource, store: ArtifactStore
) -> dg.SensorResult:
    """New or changed records files become partitions and runs (one per served revision);
    removed ones are reported, never dropped. The cursor holds each file's SHA-256, with the size
    and modification time it was read at: an unchanged file is not read again."""
    from naics_ml.records.source import files_cursor, watched_files
    from naics_ml.revision_folder import RevisionFolder

    folder = records.folder()
    if folder is None or not folder.is_dir():
        return dg.SensorResult(skip_reason=f"no records folder (NAICS_RECORDS_DIR: {folder})")
    files, seen = watched_files(folder, context.cursor)
    removed = sorted(set(seen) - set(files))
    if removed:
        context.log.warning(f"records files gone from {folder}: {removed}; their codes are kept")
    changed = [n for n, f in files.items() if n not in seen or seen[n].digest != f.digest]
    known = context.instance.get_dynamic_partitions(revision_partitions.name)
    served = [r for r in known if RevisionFolder.under(store.base(), r).serving.is_file()]
    requests = [
        dg.RunRequest(
            partition_key=dg.MultiPartitionKey({"revision": r, "records_file": n}),
            run_key=f"{n}:{files[n].digest}:{r}",
        )
        for n in changed
        for r in served
    ]
    existing = set(context.instance.get_dynamic_partitions(records_partitions.name))
    added = [n for n in files if n not in existing]
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[records_partitions.build_add_request(added)] if added else [],
        # a changed file waits in the cursor until some revision serves a model
        cursor=files_cursor(f for n, f in files.items() if n not in changed or served),
    )
