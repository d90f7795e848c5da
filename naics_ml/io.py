"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Everything is written to a temporary file in the destination folder (same file system, so
``os.replace`` is an atomic rename) and renamed over the target only after the writer finished.
A crash mid-write leaves the previous file intact plus, at worst, a hidden temporary file.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_save_torch", "atomic_write_text", "write_parquet_atomic"]


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``.

    The temporary name keeps the suffix of ``path`` (writers such as matplotlib infer the format
    from it). On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}"
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic_path: nothing was written to {tmp} for {path}")
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_parquet_atomic(frame: Any, path: Path | str) -> Path:
    """Write a polars ``frame`` (zstd) through a temp file renamed over ``path``."""
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp, compression="zstd")
    return Path(path)


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_save_torch(obj: Any, path: Path | str) -> Path:
    """``torch.save`` to ``path`` atomically; returns ``path``."""
    import torch  # local: the data assets use this module and must not pay for torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)
