"""Run a command and sample its process tree: wall time and peak resident memory (summed)."""

from __future__ import annotations

import subprocess
import time
from typing import IO

import psutil


def run_measured(
    command: list[str], stdout: IO | int = subprocess.PIPE, interval_s: float = 0.02
) -> tuple[float, float, psutil.Popen]:
    """(wall seconds, peak RSS in MiB of the process and all its children, finished process)."""
    start = time.perf_counter()
    process = psutil.Popen(command, stdout=stdout, stderr=subprocess.STDOUT, text=True)
    peak = 0
    while process.poll() is None:
        try:
            tree = [process, *process.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(interval_s)
    return time.perf_counter() - start, peak / 2**20, process
