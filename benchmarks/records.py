"""Speed and memory of coding a records file in the pipeline (``business_codes``), with one
and with two worker processes.

    DAGSTER_HOME=$PWD python benchmarks/records.py [--revision 2022]

Needs a revision with a served stage (the README's main command). Builds records files of
10,000 and 100,000 rows from the real firm descriptions of ``../shared/realtext`` (cycled, as
``benchmarks/classify.py`` does; only timed, nothing is tuned on them) in a fresh records
folder, and materializes ``business_codes`` for them with ``dagster asset materialize``, the
multiprocess executor and parts of ``--part-rows`` rows:

- 10,000 rows and 100,000 rows with one worker process at a time (all cores each);
- 100,000 rows again with two worker processes side by side (one core each).

Prints JSON: per run wall time and rows per second (the whole command: start-up, reading,
coding, joining), the peak resident memory of the largest single process and of the whole
process tree, and whether the two-process codes equal the one-process codes (top code and
fallback of every row; the largest confidence difference beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import polars as pl
from classify import real_texts
from measure import StealMeter, run_sampled

from naics_ml.revision_folder import RevisionFolder


def write_file(folder: Path, rows: int) -> str:
    name = f"bench_{rows}.csv"
    texts = real_texts(rows)
    pl.DataFrame({"id": [f"R{i:07d}" for i in range(rows)], "text": texts}).write_csv(folder / name)
    return name


def code(name: str, revision: str, workers: int, args: argparse.Namespace) -> dict[str, object]:
    """Materialize ``business_codes`` for one file; wall time and memory of the command."""
    import dagster as dg

    cores = os.cpu_count() or 1
    config = {
        "ops": {
            "business_codes": {
                "config": {
                    "part_rows": args.part_rows,
                    "chunk_rows": args.chunk_rows,
                    "torch_threads": max(1, cores // workers),
                }
            }
        },
        "execution": {"config": {"multiprocess": {"max_concurrent": workers}}},
    }
    key = str(dg.MultiPartitionKey({"revision": revision, "records_file": name}))
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "asset", "materialize", "-m", "naics_assets.definitions"]
    command += ["--select", "business_codes", "--partition", key]
    command += ["--config-json", json.dumps(config)]
    with open(args.log, "a") as log:
        wall, tree_mb, each, process = run_sampled(command, stdout=log, interval_s=0.2)
    if process.returncode != 0:
        raise SystemExit(f"business_codes for {name} failed; see {args.log}")
    rows = int(name.removeprefix("bench_").removesuffix(".csv"))
    return {
        "rows": rows,
        "workers": workers,
        "torch_threads": max(1, cores // workers),
        "wall_s": round(wall, 1),
        "rows_per_s": round(rows / wall, 1),
        "peak_rss_mb_largest_process": round(max(each.values())),
        "peak_rss_mb_process_tree": round(tree_mb),
        "processes": len(each),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--revision", default="2022")
    parser.add_argument("--rows", type=int, nargs=2, default=[10_000, 100_000])
    parser.add_argument("--part-rows", type=int, default=50_000)
    parser.add_argument("--chunk-rows", type=int, default=5_000)
    parser.add_argument("--log", type=Path, default=Path("storage/benchmark_records.log"))
    args = parser.parse_args()
    if "DAGSTER_HOME" not in os.environ:
        raise SystemExit("set DAGSTER_HOME to the project root")
    import dagster as dg

    args.log.parent.mkdir(parents=True, exist_ok=True)
    small, large = args.rows
    folder = Path(tempfile.mkdtemp(prefix="naics_records_bench_"))
    (folder / "records.yaml").write_text("text_column: text\nid_column: id\n")
    names = [write_file(folder, small), write_file(folder, large)]
    os.environ["NAICS_RECORDS_DIR"] = str(folder)
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("records_file", names)
    root = Path(os.environ["DAGSTER_HOME"]) / "storage" / "artifacts"
    coded = RevisionFolder.under(root, args.revision).business_codes(names[1])
    steal = StealMeter()
    runs = [code(names[0], args.revision, 1, args), code(names[1], args.revision, 1, args)]
    one = pl.read_parquet(coded, columns=["id", "code", "fallback_code", "confidence"])
    runs.append(code(names[1], args.revision, 2, args))
    two = pl.read_parquet(coded, columns=["id", "code", "fallback_code", "confidence"])
    result = {
        "revision": args.revision,
        "cpus": os.cpu_count(),
        "part_rows": args.part_rows,
        "chunk_rows": args.chunk_rows,
        "runs": runs,
        "two_workers_same_codes": one.select("id", "code", "fallback_code").equals(
            two.select("id", "code", "fallback_code")
        ),
        "max_confidence_difference": float((one["confidence"] - two["confidence"]).abs().max()),
        "cpu_steal_pct": steal.percent(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
