"""Run a command and sample its process tree: wall time and peak resident memory (summed); the
share of CPU time the hypervisor took from this machine meanwhile."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import IO

import psutil


def run_measured(
    command: list[str], stdout: IO | int = subprocess.PIPE, interval_s: float = 0.02
) -> tuple[float, float, psutil.Popen]:
    """(wall seconds, peak RSS in MiB of the process and all its children, finished process)."""
    wall, peak, _, process = run_sampled(command, stdout, interval_s)
    return wall, peak, process


def run_sampled(
    command: list[str], stdout: IO | int = subprocess.PIPE, interval_s: float = 0.02
) -> tuple[float, float, dict[int, float], psutil.Popen]:
    """(wall seconds, peak summed RSS of the process tree in MiB, each process's own peak RSS in
    MiB by pid (the command's first), finished process)."""
    start = time.perf_counter()
    process = psutil.Popen(command, stdout=stdout, stderr=subprocess.STDOUT, text=True)
    peak, each = 0, {process.pid: 0.0}
    while process.poll() is None:
        try:
            rss = {p.pid: p.memory_info().rss for p in [process, *process.children(recursive=True)]}
        except psutil.Error:
            rss = {}
        peak = max(peak, sum(rss.values()))
        for pid, value in rss.items():
            each[pid] = max(each.get(pid, 0.0), value / 2**20)
        time.sleep(interval_s)
    return time.perf_counter() - start, peak / 2**20, each, process


class StealMeter:
    """Percent of the machine's CPU time stolen by the hypervisor since creation (Linux ``steal``
    in ``/proc/stat``; 0 elsewhere). These VMs share hosts: a run with a high figure is slow
    because of its neighbours, not because of the code."""

    def __init__(self) -> None:
        self._start = psutil.cpu_times()

    def percent(self) -> float:
        end = psutil.cpu_times()
        total = sum(end) - sum(self._start)
        stolen = getattr(end, "steal", 0.0) - getattr(self._start, "steal", 0.0)
        return round(100.0 * stolen / total, 1) if total > 0 else 0.0


def peak_rss_mb() -> float:
    """This process's high-water mark of resident memory (VmHWM on Linux; the current RSS
    elsewhere), in MiB."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return psutil.Process().memory_info().rss / 2**20
