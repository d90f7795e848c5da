"""Atomic parquet writes: readers see the previous file or the new one, never a partial one."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from naics_ml.io import atomic_path


def write_parquet_atomic(frame: pl.DataFrame, path: Path) -> Path:
    """Write ``frame`` (zstd) through a temp file in the same folder renamed over ``path``."""
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp, compression="zstd")
    return Path(path)
