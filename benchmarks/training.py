"""Time and memory of training the three stages with the default configuration, as users run it.

    DAGSTER_HOME=$PWD NAICS_CENSUS_DIR=$PWD/../shared/census python benchmarks/training.py

Materializes ``stage_01_easy``, ``stage_02_medium``, ``stage_03_hard`` and ``naics_embeddings``
for a revision (default 2022) with ``dagster asset materialize``, one command per asset, on data
assets that are already materialized; peak RSS is the largest sum of the resident memory of the
command's process tree, sampled every 0.2 s. A run that starts at ``stage_01_easy`` first
deletes the revision's caches (the frozen-prefix cache and the baselines' metrics), so that it
measures what a first materialization costs; ``--warm`` keeps them. Prints JSON with wall
time and peak RSS per asset, the total, and each stage's headline metrics (and its entry-memory
retrieval) read from its ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import psutil
from measure import run_measured

from naics_ml.evaluation.metrics import RETRIEVAL_KEYS
from naics_ml.evaluation.stage_report import HEADLINE, MEMORY_PREFIX
from naics_ml.revision_folder import RevisionFolder
from naics_ml.stage_table import STAGE_NAMES

REALTEXT_PREFIXES = (
    "realtext_",
    "embedding_realtext_",
    "baseline_zero_shot_realtext_",
    "baseline_peer_realtext_",
)
ASSETS = (*STAGE_NAMES, "naics_embeddings")


def run(asset: str, revision: str, log: Path) -> dict[str, float]:
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "asset", "materialize", "-m", "naics_assets.definitions"]
    command += ["--select", asset, "--partition", revision]
    with open(log, "a") as out:
        wall, peak_mb, process = run_measured(command, stdout=out, interval_s=0.2)
    if process.returncode != 0:
        raise SystemExit(f"{asset} failed (exit {process.returncode}); see {log}")
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(peak_mb)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--revision", default="2022")
    parser.add_argument("--log", type=Path, default=Path("storage/benchmark_training.log"))
    parser.add_argument(
        "--assets",
        nargs="+",
        choices=ASSETS,
        default=list(ASSETS),
        help="a later part of the chain only (its inputs must be materialized); default all",
    )
    parser.add_argument(
        "--warm",
        action="store_true",
        help="keep the prefix and baseline caches of an earlier run (default: start cold)",
    )
    args = parser.parse_args()
    if "DAGSTER_HOME" not in os.environ:
        raise SystemExit("set DAGSTER_HOME to the project root")
    args.log.parent.mkdir(parents=True, exist_ok=True)
    root = Path(os.environ["DAGSTER_HOME"]) / "storage" / "artifacts"
    revision = RevisionFolder.under(root, args.revision)
    cold = STAGE_NAMES[0] in args.assets and not args.warm
    if cold:  # the caches the stages rebuild on demand
        for cache in (revision.prefix_cache, revision.baselines):
            shutil.rmtree(cache, ignore_errors=True)
    stages = {asset: run(asset, args.revision, args.log) for asset in args.assets}
    for asset in [a for a in args.assets if a in STAGE_NAMES]:
        metrics = json.loads(revision.stage(asset).metrics.read_text())
        stages[asset]["metrics"] = {k: round(metrics[k], 4) for k in HEADLINE}
        stages[asset]["with_memory"] = {
            k: round(metrics[f"{MEMORY_PREFIX}test_{k}"], 4)
            for k in RETRIEVAL_KEYS
            if f"{MEMORY_PREFIX}test_{k}" in metrics
        }
        stages[asset]["baseline_zero_shot"] = {
            k: round(metrics[f"baseline_zero_shot_{k}"], 4) for k in HEADLINE
        }
        stages[asset]["baseline_tfidf"] = {
            k: round(metrics[f"baseline_tfidf_{k}"], 4) for k in HEADLINE
        }
        stages[asset]["realtext"] = {
            k: round(v, 4)
            for k, v in metrics.items()
            if k.startswith(REALTEXT_PREFIXES)
            and k.endswith(("hit1", "hit5", "sector_at_1"))
            and "_sector_" not in k.removesuffix("sector_at_1")  # per-sector rows: in MLflow
        }
        stages[asset]["selection_score"] = metrics.get("selection_score")
        stages[asset]["cophenetic"] = round(metrics["cophenetic"], 4)
    serving = revision.serving
    result = {
        "revision": args.revision,
        "served_stage": json.loads(serving.read_text())["stage"] if serving.is_file() else None,
        "cpus": psutil.cpu_count(),
        "assets": stages,
        "cold_caches": cold,
        "total_wall_s": round(sum(s["wall_s"] for s in stages.values()), 1),
        "max_peak_rss_mb": max(s["peak_rss_mb"] for s in stages.values()),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
