"""Build the triplet shards of a revision in parallel and swap them into place atomically.

Work is cut into units of (sector, slice of its anchors) of similar size, because one sector
(31-33, manufacturing) holds most of the triplets; units run in a process pool and each writes one
``part-NNNNN.parquet``. All parts of a build go to a hidden temporary folder first; only when every
unit succeeded is each sector folder renamed into place, so a failure leaves the previous shards
untouched (a full disk raises ``naics_ml.io.DiskFullError``). A build killed part-way leaves
hidden folders naming its pid; the next build removes them, putting back a sector folder the
killed build had moved aside but not yet replaced.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import re
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from naics_ml.data.taxonomy import exclusion_matrix, tree_distance_matrix
from naics_ml.io import disk_full_error, orphans, remove_orphans, staging_name
from naics_ml.triplets.generate import TripletConfig, sector_seed, write_triplet_part

_SECTOR = re.compile(r"^\d{2}$")
_WORKER: dict[str, np.ndarray] = {}


def sector_dir(triplets_dir: Path, sector: str) -> Path:
    """``<triplets_dir>/sector=NN``, refusing anything but a two-digit sector."""
    if not _SECTOR.fullmatch(sector):
        raise ValueError(f"sector must be two digits like '31', got {sector!r}")
    return Path(triplets_dir) / f"sector={sector}"


@dataclass(frozen=True)
class ShardReport:
    """What a build wrote: rows per sector and per hardness, and the part files."""

    rows_by_sector: dict[str, int]
    rows_by_hardness: dict[int, int]
    files: list[Path]

    @property
    def rows(self) -> int:
        return sum(self.rows_by_sector.values())


def _plan_units(
    sector: np.ndarray, excluded_counts: np.ndarray, sectors: list[str], k: int, units_per_cpu: int
) -> list[tuple[str, int, np.ndarray]]:
    """(sector, part number, anchors) slices of similar estimated size, largest first.

    The size budget comes from the whole revision, so rebuilding one sector cuts it exactly as
    a full build does (same part files)."""
    estimate = {}
    for s in sorted(set(sector.tolist())):
        m = int((sector == s).sum())
        estimate[s] = m * m * m / 3 + m * m * k + m * int(excluded_counts[sector == s].sum())
    budget = sum(estimate.values()) / max(1, (os.cpu_count() or 1) * units_per_cpu)
    units = []
    for s in sectors:
        anchors = np.flatnonzero(sector == s)
        pieces = max(1, min(anchors.size, math.ceil(estimate[s] / max(budget, 1.0))))
        units.extend((s, i, chunk) for i, chunk in enumerate(np.array_split(anchors, pieces)))
    return sorted(units, key=lambda u: -estimate[u[0]] * u[2].size)


def _init_worker(distance: np.ndarray, excluded: np.ndarray, sector: np.ndarray) -> None:
    _WORKER.update(distance=distance, excluded=excluded, sector=sector)


def _run_unit(
    path: Path, sector: str, anchors: np.ndarray, config: TripletConfig
) -> tuple[str, dict[int, int]]:
    members = np.flatnonzero(_WORKER["sector"] == sector)
    counts = write_triplet_part(
        path,
        members,
        anchors,
        _WORKER["distance"],
        _WORKER["excluded"],
        config,
        sector_seed(config.seed, sector),
    )
    return sector, counts


def build_triplet_shards(
    codes: pl.DataFrame,
    triplets_dir: Path,
    config: TripletConfig = TripletConfig(),
    sectors: list[str] | None = None,
    workers: int | None = None,
    distance: np.ndarray | None = None,
) -> ShardReport:
    """Write ``sector=NN/part-*.parquet`` for the given sectors (all by default) of ``codes``."""
    triplets_dir = Path(triplets_dir)
    sector = codes["sector"].to_numpy().astype(str)
    all_sectors = sorted(set(sector.tolist()))
    sectors = all_sectors if sectors is None else sorted(set(sectors))
    unknown = [s for s in sectors if s not in all_sectors]
    if unknown:
        raise ValueError(f"unknown sector(s) {unknown}; this revision has {all_sectors}")
    distance = tree_distance_matrix(codes) if distance is None else distance
    excluded = exclusion_matrix(codes)
    units = _plan_units(sector, excluded.sum(axis=1), sectors, config.cross_sector_k, 3)

    _recover(triplets_dir)
    staging = triplets_dir / staging_name("build")
    try:
        for s in sectors:
            sector_dir(staging, s).mkdir(parents=True)
        counted = _build_parts(staging, units, config, workers, (distance, excluded, sector))
        files = _swap_into_place(staging, triplets_dir, sectors)
    except OSError as error:
        full = disk_full_error(error, triplets_dir)  # while the parts still take their space
        if full is None or full is error:
            raise
        raise full from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    rows_by_sector = dict.fromkeys(sectors, 0)
    rows_by_hardness: dict[int, int] = {}
    for s, counts in counted:
        for hardness, count in counts.items():
            rows_by_sector[s] += count
            rows_by_hardness[hardness] = rows_by_hardness.get(hardness, 0) + count
    return ShardReport(rows_by_sector, dict(sorted(rows_by_hardness.items())), files)


def _build_parts(
    staging: Path,
    units: list[tuple[str, int, np.ndarray]],
    config: TripletConfig,
    workers: int | None,
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> list[tuple[str, dict[int, int]]]:
    """Every unit's part file under ``staging``, in a process pool; (sector, rows by hardness)."""
    paths = [sector_dir(staging, s) / f"part-{i:05d}.parquet" for s, i, _ in units]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers or os.cpu_count() or 1, context, initializer=_init_worker, initargs=arrays
    ) as pool:
        futures = [
            pool.submit(_run_unit, path, s, anchors, config)
            for path, (s, _, anchors) in zip(paths, units, strict=True)
        ]
        return [future.result() for future in futures]


def _recover(triplets_dir: Path) -> None:
    """Clean up after a build killed part-way: a sector folder it had moved aside but not yet
    replaced goes back, then its staging and retired folders are removed."""
    if not triplets_dir.is_dir():
        return
    for retired in orphans(triplets_dir, "retired"):
        for old in retired.glob("sector=*"):
            final = triplets_dir / old.name
            if not final.exists():
                os.replace(old, final)
    remove_orphans(triplets_dir, "retired")
    remove_orphans(triplets_dir, "build")


def _swap_into_place(staging: Path, triplets_dir: Path, sectors: list[str]) -> list[Path]:
    retired = triplets_dir / staging_name("retired")
    files = []
    try:
        for s in sectors:
            final = sector_dir(triplets_dir, s)
            if final.exists():
                retired.mkdir(exist_ok=True)
                os.replace(final, sector_dir(retired, s))
            os.replace(sector_dir(staging, s), final)
            files.extend(sorted(final.glob("part-*.parquet")))
    finally:
        shutil.rmtree(retired, ignore_errors=True)
    return files


def shard_sectors(triplets_dir: Path) -> list[str]:
    """Sectors that have at least one part file under ``triplets_dir``."""
    return sorted(
        p.name.split("=", 1)[1]
        for p in Path(triplets_dir).glob("sector=*")
        if p.is_dir() and any(p.glob("part-*.parquet"))
    )
