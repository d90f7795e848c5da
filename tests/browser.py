"""Helpers of the browser tests (``tests/test_ui_browser.py``): find Chromium, run a web server
in its own process group, save screenshots.

Playwright drives the system's Chromium (Debian's ``chromium`` package): Playwright's own browser
download needs the internet. ``NAICS_CHROMIUM`` names another binary; ``NAICS_SCREENSHOT_DIR``
is a folder that receives a copy of every screenshot (``docs/images`` to refresh the docs').
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_executable() -> str | None:
    """``NAICS_CHROMIUM`` when it is a file, else the first Chromium on PATH, else None."""
    configured = os.environ.get("NAICS_CHROMIUM")
    if configured:
        return configured if Path(configured).is_file() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def venv_script(name: str) -> str:
    """A console script of this interpreter's environment (``.venv/bin/<name>``)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else (shutil.which(name) or name)


def log_tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.is_file() else ""


def wait_for_url(url: str, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    """Poll ``url`` until it answers 200; fail early when the server exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited ({process.returncode}):\n{log_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s:\n{log_tail(log)}")


def stop_process_group(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the server's process group (it was started in a new session, so its id is the
    server's pid), then SIGKILL whatever is left of it (workers, run subprocesses)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with suppress(subprocess.TimeoutExpired):
        process.wait(grace_s)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(5)


@contextmanager
def running_server(
    command: Sequence[str],
    ready_url: str,
    log: Path,
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout_s: float = 120.0,
) -> Iterator[subprocess.Popen]:
    """Start ``command`` in a new session, wait until ``ready_url`` answers, and always stop the
    whole process group by its id on the way out."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for_url(ready_url, process, log, timeout_s)
            yield process
        finally:
            stop_process_group(process)


def save_screenshot(page, folder: Path, name: str, *, settle: bool = True) -> Path:
    """The page's viewport as ``folder/name``, copied into ``NAICS_SCREENSHOT_DIR`` when set.
    ``settle`` first waits (10 s at most) for the network to go quiet: icons, late queries."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    if settle:
        with suppress(PlaywrightTimeout):
            page.wait_for_load_state("networkidle", timeout=10_000)
    path = folder / name
    page.screenshot(path=str(path))
    extra = os.environ.get("NAICS_SCREENSHOT_DIR")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(extra) / name)
    return path
