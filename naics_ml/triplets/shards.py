"""Build the triplet shards of a revision in parallel and switch them into place as one set.

Work is cut into units of (sector, slice of its anchors) of similar size, because one sector
(31-33, manufacturing) holds most of the triplets; units run in a process pool and each writes one
``part-NNNNN.parquet``. All parts of a build go to a hidden staging folder first, with the
sectors not rebuilt hard-linked in from the current set; only when every unit succeeded does
``triplets`` switch to it in one step (``naics_ml.linked_sets``), so a failure or a kill leaves
the previous shards untouched and never a mix of two builds (a full disk raises
``naics_ml.io.DiskFullError``).
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
from naics_ml.io import disk_full_error, orphans, remove_orphans
from naics_ml.linked_sets import (
    current_set,
    new_set_version,
    prepare_set,
    publish_set,
    staging_folder,
)
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

    prepare_set(triplets_dir)
    current = current_set(triplets_dir)
    if current is not None and not triplets_dir.is_symlink():
        _recover(current)  # a plain folder of the older layout: undo a killed sector swap
    staging = staging_folder(triplets_dir)
    try:
        for s in sectors:
            sector_dir(staging, s).mkdir(parents=True)
        counted = _build_parts(staging, units, config, workers, (distance, excluded, sector))
        _carry_unchanged(current, staging, sectors)
        publish_set(staging, triplets_dir, new_set_version())
        files = [f for s in sectors for f in sorted(sector_dir(triplets_dir, s).glob("part-*"))]
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


def _recover(folder: Path) -> None:
    """In a plain triplets folder of the older layout, undo a build killed part-way through its
    sector-by-sector swap: a sector folder moved aside but not yet replaced goes back."""
    for retired in orphans(folder, "retired"):
        for old in retired.glob("sector=*"):
            final = folder / old.name
            if not final.exists():
                os.replace(old, final)
    remove_orphans(folder, "retired")
    remove_orphans(folder, "build")


def _carry_unchanged(current: Path | None, staging: Path, rebuilt: list[str]) -> None:
    """The sectors of the current set that this build does not rebuild, hard-linked into the
    new one (the same files, no copy; copied where the file system has no hard links)."""
    if current is None:
        return
    for folder in sorted(current.glob("sector=*")):
        if folder.is_dir() and folder.name.split("=", 1)[1] not in rebuilt:
            shutil.copytree(folder, staging / folder.name, copy_function=_link_or_copy)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def shard_sectors(triplets_dir: Path) -> list[str]:
    """Sectors that have at least one part file under ``triplets_dir``."""
    return sorted(
        p.name.split("=", 1)[1]
        for p in Path(triplets_dir).glob("sector=*")
        if p.is_dir() and any(p.glob("part-*.parquet"))
    )
