"""``reviewed_labels``: the reviewed records of ``NAICS_LABELS_DIR``, checked against a
revision's codes, kept apart from every evaluation set and split into train and validation,
as ``storage/artifacts/<revision>/reviewed_labels.parquet``. Every stage trains its query path
on the train part and validates on the other (beside the Maryland rows), and says in its
metadata which files and how many rows it trained on. ``labels_sensor`` materializes it for
every revision when a file in the folder is added, changed or removed; the next stage run
picks it up (a new labels file does not retrain on its own: the stages ignore this dependency
in their automation condition).
"""

import dagster as dg

from naics_assets.assets.codes import naics_codes, naics_index_entries
from naics_assets.partitions import revision_partitions
from naics_assets.resources import ArtifactStore, RealTextSource, RecordsSource


@dg.asset(
    partitions_def=revision_partitions,
    deps=[naics_codes, naics_index_entries],
    group_name="records",
    kinds={"parquet"},
)
def reviewed_labels(
    context: dg.AssetExecutionContext,
    store: ArtifactStore,
    records: RecordsSource,
    realtext: RealTextSource,
) -> dg.MaterializeResult:
    """Reviewed records as labelled training texts: unknown codes, empty texts and evaluation
    texts named and skipped, the rest split by a hash of the text."""
    import polars as pl

    from naics_ml.data.codes import six_digit_codes
    from naics_ml.data.index_split import held_out_keys, normalize_text
    from naics_ml.data.realtext import RealTextSplit, load_labelled_texts
    from naics_ml.io import atomic_path
    from naics_ml.records.labels import LABELS_SCHEMA, LABELS_SPLIT, reviewed_labels
    from naics_ml.records.source import RecordsError

    folder = store.revision(context.partition_key)
    codes = six_digit_codes(pl.read_parquet(folder.codes)).tolist()
    entries = pl.read_parquet(folder.entries)
    evaluation = held_out_keys(entries)
    boston = realtext.path(realtext.eval_file)
    if boston is not None:
        evaluation |= {normalize_text(t) for t in load_labelled_texts(boston)["text"]}
    labels_dir = records.labels_folder()
    labels, reports = pl.DataFrame(schema=LABELS_SCHEMA), []
    if labels_dir is not None and labels_dir.is_dir():
        split = RealTextSplit(records.labels_validation, LABELS_SPLIT.salt)
        try:
            labels, reports = reviewed_labels(labels_dir, codes, evaluation, split)
        except RecordsError as error:
            raise dg.Failure(str(error)) from error
    else:
        context.log.info(f"no labels folder (NAICS_LABELS_DIR: {labels_dir}); no reviewed labels")
    for report in reports:
        if report.problems():
            context.log.warning(f"{report.name}: skipped {report.problems()}")
    with atomic_path(folder.reviewed_labels) as tmp:
        labels.write_parquet(tmp)
    rows = [
        "| file | rows | reviewed | train | validation | skipped |",
        "|---|---|---|---|---|---|",
    ]
    rows += [
        f"| {r.name} | {r.rows} | {r.reviewed} | {r.train} | {r.validation} | "
        f"{r.problems() or '-'} |"
        for r in reports
    ]
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(folder.reviewed_labels)),
            "dagster/row_count": labels.height,
            "train_rows": labels.filter(pl.col("split") == "train").height,
            "validation_rows": labels.filter(pl.col("split") == "validation").height,
            "files": dg.MetadataValue.md("\n".join(rows)),
            "labels_dir": str(labels_dir),
        }
    )


labels_job = dg.define_asset_job(
    "reviewed_labels_job",
    selection=[reviewed_labels],
    description="Read, check and split the reviewed records of NAICS_LABELS_DIR.",
)


@dg.sensor(job=labels_job, minimum_interval_seconds=60)
def labels_sensor(
    context: dg.SensorEvaluationContext, records: RecordsSource, store: ArtifactStore
) -> dg.SensorResult:
    """A labels file added, changed or removed in ``NAICS_LABELS_DIR``: ``reviewed_labels`` of
    every revision again. The cursor holds each file's digest, size and modification time."""
    from naics_ml.records.source import files_cursor, watched_files
    from naics_ml.revision_folder import RevisionFolder

    folder = records.labels_folder()
    if folder is None or not folder.is_dir():
        return dg.SensorResult(skip_reason=f"no labels folder (NAICS_LABELS_DIR: {folder})")
    files, seen = watched_files(folder, context.cursor)
    if {n: f.digest for n, f in files.items()} == {n: f.digest for n, f in seen.items()}:
        return dg.SensorResult(skip_reason=f"no labels file added, changed or removed in {folder}")
    removed = sorted(set(seen) - set(files))
    if removed:
        context.log.warning(f"labels files gone from {folder}: {removed}; no longer trained on")
    state = "".join(sorted(f"{n}:{f.digest}" for n, f in files.items()))
    known = context.instance.get_dynamic_partitions(revision_partitions.name)
    revisions = [r for r in known if RevisionFolder.under(store.base(), r).codes.is_file()]
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(partition_key=r, run_key=f"labels:{r}:{hash_of(state)}")
            for r in revisions
        ],
        cursor=files_cursor(files.values()),
    )


def hash_of(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]
