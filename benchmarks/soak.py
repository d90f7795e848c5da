"""Soak: the 2022 data chain materialized again and again, and 10,000 texts classified again and
again, in one process, looking for growth.

    python benchmarks/soak.py [--runs 10] [--texts 10000] [--stage DIR]

Each data run is a real ``dg.materialize`` of the five data assets for 2022 on a persistent
Dagster instance in a temporary DAGSTER_HOME (its own ``storage/``, so the project's is never
touched); each classify run is ``Classifier.predict`` over the real labelled texts, cycled. Per
run it records wall time, the process's resident memory after the run and its high-water mark,
open file descriptors, and files under the temporary ``storage/`` (artifacts, which must stay
flat, apart from Dagster's run history). Prints one JSON object; a
leak shows as a column that keeps rising.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import psutil
from classify import real_texts, served_stage
from measure import peak_rss_mb

ROOT = Path(__file__).resolve().parents[1]
CENSUS = ROOT.parent / "shared" / "census"


def sample(storage: Path) -> dict[str, float]:
    """Memory, descriptors and stored files of this process now."""
    process = psutil.Process()
    artifacts = count_files(storage / "artifacts")
    return {
        "rss_mb": round(process.memory_info().rss / 2**20),
        "peak_rss_mb": round(peak_rss_mb()),
        "open_fds": process.num_fds(),
        "artifact_files": artifacts,  # must stay flat: each run replaces its files
        "dagster_files": count_files(storage) - artifacts,  # run history: grows by design
    }


def count_files(folder: Path) -> int:
    return sum(len(names) for _, _, names in os.walk(folder)) if folder.exists() else 0


def data_runs(home: Path, runs: int) -> list[dict[str, float]]:
    """``runs`` materializations of the data chain for 2022 on one instance under ``home``."""
    import dagster as dg

    from naics_assets.assets.census import census_workbooks
    from naics_assets.assets.codes import naics_codes, naics_index_entries
    from naics_assets.assets.distances import naics_distances
    from naics_assets.assets.triplets import naics_triplets
    from naics_assets.resources import ArtifactStore, CensusSource

    assets = [census_workbooks, naics_index_entries, naics_codes, naics_distances, naics_triplets]
    resources = {
        "census": CensusSource(local_dir=str(CENSUS)),
        "store": ArtifactStore(root=str(home / "storage" / "artifacts")),
    }
    storage = home / "storage"
    out = []
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("naics_revision", ["2022"])
        for _ in range(runs):
            start = time.perf_counter()
            result = dg.materialize(
                assets, partition_key="2022", instance=instance, resources=resources
            )
            assert result.success
            out.append({"wall_s": round(time.perf_counter() - start, 2), **sample(storage)})
    return out


def classify_runs(stage: Path, runs: int, n_texts: int, storage: Path) -> list[dict[str, float]]:
    """``runs`` passes of ``predict`` over ``n_texts`` real descriptions (the CLI's precision)."""
    from naics_ml.inference.classifier import Classifier

    classifier = Classifier.from_checkpoint(stage, precision="auto")
    texts = real_texts(n_texts)
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        for first in range(0, len(texts), 256):
            classifier.predict(texts[first : first + 256])
        out.append({"wall_s": round(time.perf_counter() - start, 2), **sample(storage)})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stage", type=Path, help="a stage folder (default: the served one)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--texts", type=int, default=10_000)
    args = parser.parse_args()
    args.stage = args.stage or served_stage()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    home = Path(tempfile.mkdtemp(prefix="naics-soak-"))
    # the project's dagster.yaml with its relative base_dir (read from the working directory)
    # pointed at home/storage, so that the soak never writes into the project's storage/
    config = (
        (ROOT / "dagster.yaml")
        .read_text()
        .replace("base_dir: storage", f"base_dir: {home}/storage")
    )
    (home / "dagster.yaml").write_text(config)
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        data = data_runs(home, args.runs)
        classify = classify_runs(args.stage, args.runs, args.texts, home / "storage")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print(json.dumps({"runs": args.runs, "texts": args.texts, "data": data, "classify": classify}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
