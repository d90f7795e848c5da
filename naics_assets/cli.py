"""``naics-gemini``: what the Dagster CLI cannot do for this project.

* ``add-revision YEAR``: revision partitions are dynamic (a new NAICS revision needs no code
  change), so a revision must be registered on the instance before ``dagster asset materialize
  --partition <YEAR>`` accepts it. The new-revision sensor does that by itself.
* ``classify``: classify one text (a table, or JSON lines with ``--format json``) or a CSV,
  Parquet or JSON-lines file (``--input``/``--output``) with the stage that validation chose
  (``models/serving.json``, written by ``naics_embeddings``), or ``--stage NAME`` / ``--model
  PATH``.
* ``runs``: the latest finished MLflow run of each stage side by side (headline metrics, wall
  time), from the project's MLflow store.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from naics_ml.data.census import validate_revision
from naics_ml.revision_folder import safe_revision
from naics_ml.stage_table import STAGE_NAMES


def add_revisions(revisions: list[str]) -> list[str]:
    """Register revisions on the Dagster instance at DAGSTER_HOME; returns the newly added."""
    import dagster as dg

    from naics_assets.partitions import revision_partitions

    for revision in revisions:
        validate_revision(revision)
    with dg.DagsterInstance.get() as instance:
        known = set(instance.get_dynamic_partitions(revision_partitions.name))
        new = [r for r in revisions if r not in known]
        if new:
            instance.add_dynamic_partitions(revision_partitions.name, new)
    return new


def default_artifacts() -> Path:
    """Where the assets write: NAICS_ARTIFACTS_DIR, else the project's storage/artifacts."""
    from naics_assets.resources import ArtifactStore

    return ArtifactStore.from_env().base()


def stage_folder(args: argparse.Namespace) -> Path:
    """``--model``, else ``--stage`` of the revision, else the stage validation chose."""
    from naics_ml.inference.serving import newest_stage, served_stage

    if args.revision is not None:
        safe_revision(args.revision)
    if args.model is not None:
        return args.model
    if args.stage is not None:
        return newest_stage(args.artifacts, args.stage, args.revision)
    return served_stage(args.artifacts, args.revision)


def classify_command(args: argparse.Namespace) -> int:
    """``naics-gemini classify``: load the stage, classify, print or write."""
    from naics_ml.inference.batch import InputError, classify_frame, read_texts, write_table

    if (args.input is None) == (args.text is None):
        raise InputError("give a text, or --input FILE with --output FILE")
    if args.input is not None and (args.output is None or args.text_column is None):
        raise InputError("--input needs --text-column COL and --output FILE")
    frame = read_texts(args.input, args.text_column) if args.input else None
    if args.model is not None and args.stage is not None:
        raise InputError("give --stage NAME or --model PATH, not both")
    folder = stage_folder(args)
    if not args.quiet:
        print(f"model: {folder}", file=sys.stderr)
    from naics_ml.inference.classifier import Classifier

    classifier = Classifier.from_checkpoint(folder, precision=args.precision, device=args.device)

    def classify(texts: list[str]) -> list:
        return classifier.predict(texts, args.top_k, args.min_confidence)

    if frame is not None:
        out = classify_frame(classify, frame, args.text_column, progress=not args.quiet)
        write_table(out, args.output)
        print(f"{out.height} rows -> {args.output}", file=sys.stderr)
        return 0
    print_predictions(classify([args.text])[0], args.format)
    return 0


def print_predictions(predictions: list, form: str) -> None:
    """A table (rank, code, title, confidence, fallback; then evidence and warnings), or JSON."""
    if form == "json":
        from dataclasses import asdict

        for rank, p in enumerate(predictions, start=1):
            print(json.dumps({"rank": rank, **asdict(p)}))
        return
    print(f"{'rank':>4}  {'code':6}  {'confidence':>10}  title")
    for rank, p in enumerate(predictions, start=1):
        print(f"{rank:>4}  {p.code:6}  {p.confidence:>10.3f}  {p.title}")
    top = predictions[0]
    if top.fallback_code:
        print(f"fallback: {top.fallback_code} {top.fallback_title} ({top.fallback_confidence:.3f})")
    else:
        print("fallback: none (no level reaches --min-confidence)")
    for e in top.evidence:
        print(f"evidence: {e.text!r} ({e.code})")
    for w in top.warnings:
        print(f"warning: {w.exclusion}\n  alternative: {w.alternative_code} {w.alternative_title}")


def runs_command(args: argparse.Namespace) -> int:
    """``naics-gemini runs``: print the stage comparison (or JSON), or say there is none."""
    from mlflow.tracking import MlflowClient

    from naics_assets.run_table import latest_stage_runs, runs_records, runs_table
    from naics_assets.tracking import MlflowTracker

    tracker = MlflowTracker(tracking_uri=args.tracking_uri or "")
    runs = latest_stage_runs(MlflowClient(tracker.uri()), tracker.experiment, args.revision)
    if not runs:
        print(
            f"no finished stage run in {tracker.uri()}; materialize the stages first: "
            "dagster asset materialize -m naics_assets.definitions "
            f"--select '{','.join(STAGE_NAMES)}' --partition 2022",
            file=sys.stderr,
        )
        return 1
    if args.format == "json":
        for record in runs_records(runs):
            print(json.dumps(record))
    else:
        print(runs_table(runs))
    return 0


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="naics-gemini", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add-revision", help="register NAICS revision partitions")
    add.add_argument("revisions", nargs="+", metavar="YEAR")
    cls = commands.add_parser("classify", help="classify business descriptions")
    cls.add_argument("text", nargs="?", help="one description (or use --input)")
    cls.add_argument("--top-k", type=int, default=5)
    cls.add_argument("--min-confidence", type=float, default=0.5)
    cls.add_argument("--format", choices=("table", "json"), default="table")
    cls.add_argument("--input", type=Path, help="CSV, Parquet or JSON-lines file")
    cls.add_argument("--text-column", help="column of --input holding the descriptions")
    cls.add_argument("--output", type=Path, help="file to write (format by suffix)")
    cls.add_argument("--revision", help="NAICS revision (default: newest with a model)")
    cls.add_argument(
        "--stage", choices=STAGE_NAMES, help="a stage of the revision (default: the served one)"
    )
    cls.add_argument("--model", type=Path, help="a stage folder (default: the served stage)")
    cls.add_argument(
        "--artifacts",
        type=Path,
        default=None,
        help="artifact root (default: NAICS_ARTIFACTS_DIR, else storage/artifacts)",
    )
    cls.add_argument("--quiet", action="store_true", help="no model line, no progress bar")
    cls.add_argument(
        "--precision",
        choices=("auto", "float32", "bfloat16"),
        default="auto",
        help="transformer layers in bfloat16 where the CPU/GPU has it natively (auto)",
    )
    cls.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps",
    )
    runs = commands.add_parser("runs", help="compare the latest MLflow run of each stage")
    runs.add_argument("--revision", help="only runs of this NAICS revision")
    runs.add_argument("--tracking-uri", help="MLflow store (default: the project's)")
    runs.add_argument("--format", choices=("table", "json"), default="table")
    return parser


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    if args.command == "runs":
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        return runs_command(args)
    if args.command == "classify":
        args.artifacts = args.artifacts or default_artifacts()
        try:
            return classify_command(args)
        except (ValueError, FileNotFoundError) as error:
            print(f"naics-gemini classify: {error}", file=sys.stderr)
            return 2
    try:
        new = add_revisions(args.revisions)
    except ValueError as exc:
        cli.error(str(exc))
    print(f"added: {', '.join(new) or 'none (already registered)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
