"""What reviewed labels buy: stage 1 trained with growing parts of the Maryland training rows
given as reviewed labels (``NAICS_LABELS_DIR``) instead of as its real-text training set.

    DAGSTER_HOME=$PWD python benchmarks/labels_loop.py [--shares 0 0.25 0.5 1]

Needs the revision's data assets (the README's main command, or its data part). For each share
it writes a labels file holding that share of the Maryland training rows (the rows the stage
would train on: ``naics_ml.data.realtext.split_labelled_texts``, in file order) with their
code as ``reviewed_code``, materializes ``reviewed_labels`` (none held out: the Maryland
validation rows stay the validation set) and ``stage_01_easy`` with the Maryland rows off
(``RealTextSource.train_on_val_file``), into a separate artifacts folder per share
(``storage/labels_loop/<share>``, the revision's data copied in) so the chain's stages are not
touched. Prints JSON: per share the label rows, Maryland validation hit@1, Boston hit@1 and
hit@5 (evaluation only: reported, never used to choose), index test top-1 and the selection
score, read from the stage's ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import polars as pl

from naics_ml.revision_folder import RevisionFolder

DATA = (  # what a stage reads of its revision, and the caches it reuses
    RevisionFolder.CENSUS,
    RevisionFolder.ENTRIES,
    RevisionFolder.CODES,
    RevisionFolder.DISTANCES,
    RevisionFolder.TRIPLETS,
    RevisionFolder.PREFIX_CACHE,
    RevisionFolder.BASELINES,
)
KEYS = {
    "maryland_val_hit1": "realtext_val_hit1",
    "boston_hit1": "realtext_hit1",
    "boston_hit5": "realtext_hit5",
    "index_test_top1_predict": "memory_test_top1",
    "selection_score": "selection_score",
}


def maryland_train(realtext_dir: Path, codes: list[str]) -> pl.DataFrame:
    from naics_ml.data.realtext import VAL_FILE, load_labelled_texts, split_labelled_texts

    train, _ = split_labelled_texts(load_labelled_texts(realtext_dir / VAL_FILE, codes))
    return train


def run_share(share: float, args: argparse.Namespace, source: RevisionFolder) -> dict:
    import dagster as dg

    from naics_assets.assets.labels import reviewed_labels
    from naics_assets.assets.stages import STAGE_ASSETS
    from naics_assets.resources import ArtifactStore, RealTextSource, RecordsSource
    from naics_assets.tracking import MlflowTracker
    from naics_ml.data.codes import six_digit_codes

    root = Path(os.environ["DAGSTER_HOME"]) / "storage" / "labels_loop" / f"{share:g}"
    folder = RevisionFolder.under(root / "artifacts", args.revision)
    shutil.rmtree(root, ignore_errors=True)
    for name in DATA:
        if (source.path / name).is_dir():
            shutil.copytree(source.path / name, folder.path / name)
        elif (source.path / name).is_file():
            folder.path.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source.path / name, folder.path / name)
    codes = six_digit_codes(pl.read_parquet(folder.codes)).tolist()
    train = maryland_train(args.realtext, codes)
    given = train.head(round(share * train.height))
    labels = root / "labels"
    labels.mkdir(parents=True)
    given.select("text", pl.col("codes").list.first().alias("reviewed_code")).write_csv(
        labels / "maryland.review.csv"
    )
    resources = {
        "store": ArtifactStore(root=str(root / "artifacts")),
        "records": RecordsSource(labels_dir=str(labels), labels_validation=0.0),
        "realtext": RealTextSource(local_dir=str(args.realtext), train_on_val_file=False),
        "mlflow": MlflowTracker(tracking_uri=f"sqlite:///{root / 'mlflow.db'}"),
    }
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("naics_revision", [args.revision])
        result = dg.materialize(
            [reviewed_labels, STAGE_ASSETS["stage_01_easy"]],
            partition_key=args.revision,
            resources=resources,
            instance=instance,
        )
    trained = result.asset_materializations_for_node("stage_01_easy")[0].metadata
    metrics = json.loads(folder.stage("stage_01_easy").metrics.read_text())
    return {
        "share": share,
        "label_rows_trained": trained["reviewed_labels"].value,
        **{name: round(metrics[key], 4) for name, key in KEYS.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--revision", default="2022")
    parser.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0])
    parser.add_argument(
        "--realtext",
        type=Path,
        default=Path(os.environ.get("NAICS_REALTEXT_DIR", "../shared/realtext")),
    )
    args = parser.parse_args()
    if "DAGSTER_HOME" not in os.environ:
        raise SystemExit("set DAGSTER_HOME to the project root")
    home = Path(os.environ["DAGSTER_HOME"])
    source = RevisionFolder.under(home / "storage" / "artifacts", args.revision)
    if not source.codes.is_file():
        raise SystemExit(f"{source.codes}: materialize the revision's data assets first")
    runs = []
    for share in args.shares:
        runs.append(run_share(share, args, source))
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)  # each as it ends
    print(json.dumps({"revision": args.revision, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
