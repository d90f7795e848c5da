"""The child processes of ``tests/test_faults.py``: run as ``python -m tests.fault_child ...``.

- ``write OUT CENSUS VERSION``: rewrite a checkpoint, a parquet table, a JSON file and the four
  workbooks in a loop through ``naics_ml``'s writers, for the test to SIGKILL at random times;
- ``hold LOCK``: hold ``naics_ml.io.exclusive_lock`` until killed;
- ``die-at-rename checkpoint PATH`` / ``die-at-rename census DEST SOURCE``: write, then SIGKILL
  itself where the temporary file would be renamed over the final name.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl


def write_all(out: Path, census: Path, version: int) -> None:
    """One version of every kind of file the pipeline writes, each filled with ``version``."""
    import torch

    from naics_ml.data.download import fetch_workbooks
    from naics_ml.io import atomic_save_torch, atomic_write_text, write_parquet_atomic

    weights = torch.full((2_000_000,), float(version))
    atomic_save_torch({"version": version, "weights": weights}, out / "checkpoint.pt")
    table = pl.DataFrame({"version": np.full(300_000, version)})
    write_parquet_atomic(table, out / "table.parquet")
    atomic_write_text(out / "stage.json", json.dumps({"version": version, "pad": "x" * 200_000}))
    fetch_workbooks("2022", out / "census", local_dir=census)


def _write_forever(out: Path, census: Path, version: int) -> None:
    import torch  # noqa: F401 - imported before "ready", so the kill lands in the writes

    import naics_ml.data.download  # noqa: F401

    print("ready", flush=True)
    while True:
        version += 1
        write_all(out, census, version)


def _hold(lock: str) -> None:
    from naics_ml.io import exclusive_lock

    with exclusive_lock(lock, f"pid {os.getpid()} (test holder)"):
        print("held", flush=True)
        time.sleep(120)


def _die_at_rename(kind: str, *paths: str) -> None:
    """Everything written and flushed, then killed where ``os.replace`` would rename it."""
    import torch

    from naics_ml.data.download import fetch_workbooks
    from naics_ml.io import atomic_save_torch

    def die(*_: object) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    os.replace = die
    if kind == "checkpoint":
        atomic_save_torch({"version": 2, "weights": torch.full((1000,), 2.0)}, paths[0])
    else:
        fetch_workbooks("2022", Path(paths[0]), local_dir=Path(paths[1]))


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "write":
        _write_forever(Path(args[0]), Path(args[1]), int(args[2]))
    elif command == "hold":
        _hold(args[0])
    elif command == "die-at-rename":
        _die_at_rename(*args)
    else:
        raise SystemExit(f"unknown command {command!r}")
