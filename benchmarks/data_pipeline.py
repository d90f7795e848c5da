"""Benchmark the data chain on the real 2022 workbooks, each stage in its own process.

    python benchmarks/data_pipeline.py [--census-dir ../shared/census] [--revision 2022]

Prints JSON ``{"stages": {"<asset>": {"wall_s", "peak_rss_mb", "rows"}}, "total_wall_s": ...}``.
Each stage runs the same library calls as its Dagster asset (without Dagster's per-step process
start), in a fresh interpreter, so import time counts; peak RSS is the largest sum of the resident
memory of the stage's process tree (pool workers included), sampled every 20 ms.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import psutil
from measure import run_measured

from naics_ml.revision_folder import RevisionFolder

STAGES = (
    "census_workbooks",
    "naics_index_entries",
    "naics_codes",
    "naics_distances",
    "naics_triplets",
)


def run_stage(stage: str, census_dir: Path, revision: str, work: Path) -> int:
    """Do one stage's work (in this process) and return its row count."""
    import polars as pl

    from naics_ml.data.census import read_census
    from naics_ml.data.codes import build_code_table
    from naics_ml.data.download import fetch_workbooks
    from naics_ml.data.index_split import split_index_entries
    from naics_ml.data.taxonomy import matrix_from_pairs, pair_table
    from naics_ml.io import write_parquet_atomic
    from naics_ml.triplets.shards import build_triplet_shards

    raw = work / "census"
    if stage == "census_workbooks":
        return len(fetch_workbooks(revision, raw, census_dir / revision))
    if stage == "naics_index_entries":
        tables = read_census(raw, revision)
        entries = split_index_entries(tables.index, build_code_table(tables))
        write_parquet_atomic(entries, RevisionFolder(work).entries)
        return entries.height
    if stage == "naics_codes":
        tables = read_census(raw, revision)
        entries = pl.read_parquet(RevisionFolder(work).entries)
        codes = build_code_table(tables, entries.filter(pl.col("split") == "examples"))
        write_parquet_atomic(codes, RevisionFolder(work).codes)
        return codes.height
    codes = pl.read_parquet(RevisionFolder(work).codes)
    if stage == "naics_distances":
        pairs = pair_table(codes)
        write_parquet_atomic(pairs, RevisionFolder(work).distances)
        return pairs.height
    pairs = pl.read_parquet(RevisionFolder(work).distances)
    report = build_triplet_shards(
        codes, RevisionFolder(work).triplets, distance=matrix_from_pairs(pairs, codes.height)
    )
    return report.rows


def measure(stage: str, census_dir: Path, revision: str, work: Path) -> dict[str, float]:
    command = [sys.executable, __file__, "--stage", stage, "--census-dir", str(census_dir)]
    command += ["--revision", revision, "--work", str(work)]
    wall, peak_mb, process = run_measured(command)
    output = process.stdout.read()
    if process.returncode != 0:
        raise SystemExit(f"stage {stage} failed with exit code {process.returncode}:\n{output}")
    rows = int(output.strip().splitlines()[-1])
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(peak_mb, 1), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    default_census = Path(__file__).resolve().parents[2] / "shared" / "census"
    parser.add_argument("--census-dir", type=Path, default=default_census)
    parser.add_argument("--revision", default="2022")
    parser.add_argument("--stage", choices=STAGES)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    if args.stage:  # child process: do the work, print the row count
        print(run_stage(args.stage, args.census_dir, args.revision, args.work))
        return
    with tempfile.TemporaryDirectory(prefix="naics-bench-") as tmp:
        stages = {s: measure(s, args.census_dir, args.revision, Path(tmp)) for s in STAGES}
    result = {
        "revision": args.revision,
        "cpus": psutil.cpu_count(),
        "stages": stages,
        "total_wall_s": round(sum(s["wall_s"] for s in stages.values()), 2),
        "max_peak_rss_mb": max(s["peak_rss_mb"] for s in stages.values()),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
