"""Atomic file writes, process locks and clear disk-full errors.

Everything is written to a temporary file in the destination folder (same file system, so
``os.replace`` is an atomic rename) and renamed over the target only after the writer finished.
A crash mid-write leaves the previous file intact plus, at worst, a hidden temporary file whose
name records the writer's pid (``.<stem>.<pid>-<token>.tmp<suffix>``); the next write of the same
file removes such leftovers once their writer no longer runs. A full disk is reported as a
:class:`DiskFullError` naming the file, whatever the writer (torch, polars, matplotlib) raised.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "DiskFullError",
    "LockHeldError",
    "atomic_path",
    "atomic_save_torch",
    "atomic_write_text",
    "disk_full_error",
    "exclusive_lock",
    "orphans",
    "remove_orphans",
    "staging_name",
    "write_parquet_atomic",
]

# below this many free bytes after a failed write, the write failed for want of space: torch's
# zip writer reports a full disk only as "unexpected pos ..."
_NEARLY_FULL = 1 << 20
_NO_SPACE = ("no space left on device", "os error 28", "errno 28")


class DiskFullError(OSError):
    """A write failed because its file system is full (errno ``ENOSPC``); names the file."""


class LockHeldError(RuntimeError):
    """Another process holds the lock: the message names the lock file and its holder."""


def staging_name(prefix: str, suffix: str = "") -> str:
    """A hidden name recording this process: ``.<prefix>.<pid>-<token><suffix>``."""
    return f".{prefix}.{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


def _writer_pid(name: str, prefix: str, suffix: str) -> int | None:
    pattern = rf"\.{re.escape(prefix)}\.(\d+)-[0-9a-f]{{8}}{re.escape(suffix)}"
    match = re.fullmatch(pattern, name)
    return int(match.group(1)) if match else None


def is_running(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def orphans(folder: Path, prefix: str, suffix: str = "") -> list[Path]:
    """The :func:`staging_name` files or folders of ``prefix`` in ``folder`` whose writer
    process has ended (killed mid-write); a live writer's are not among them."""
    found = []
    for entry in sorted(Path(folder).glob(f".{glob.escape(prefix)}.*")):
        pid = _writer_pid(entry.name, prefix, suffix)
        if pid is not None and pid != os.getpid() and not is_running(pid):
            found.append(entry)
    return found


def remove_orphans(folder: Path, prefix: str, suffix: str = "") -> list[Path]:
    """Delete :func:`orphans`; returns what was removed."""
    removed = orphans(folder, prefix, suffix)
    for entry in removed:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    return removed


def disk_full_error(error: BaseException, path: Path | str) -> DiskFullError | None:
    """A :class:`DiskFullError` for ``path`` when ``error`` came from a full file system.

    Call it while the failed write's partial file still exists: its size counts as used."""
    if isinstance(error, DiskFullError):
        return error
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize
    said = getattr(error, "errno", None) == errno.ENOSPC
    said = said or any(text in str(error).lower() for text in _NO_SPACE)
    if not said and free >= _NEARLY_FULL:
        return None
    return DiskFullError(
        errno.ENOSPC,
        f"no space left on the device writing {path} ({free:,} bytes free in {folder}); "
        f"nothing was written under that name, free some space and run again ({error})",
    )


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``.

    The temporary name keeps the suffix of ``path`` (writers such as matplotlib infer the format
    from it). On an exception the temporary file is removed and ``path`` is left untouched; a
    full disk raises :class:`DiskFullError`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(path.parent, path.stem, f".tmp{path.suffix}")
    tmp = path.parent / staging_name(path.stem, f".tmp{path.suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic_path: nothing was written to {tmp} for {path}")
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except Exception as error:
        full = disk_full_error(error, path)
        if full is not None and full is not error:
            raise full from error
        raise
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

    # our own handle, closed as the write fails: torch's writer, kept alive by the traceback,
    # would hold the unlinked temporary file (and its space) open
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(obj, handle)
    return Path(path)


@contextmanager
def exclusive_lock(
    path: Path | str, holder: str, on_abandoned: Callable[[str], None] | None = None
) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``path`` for the block, or fail at once.

    ``holder`` (who, since when) is written into the file while held, so a second process
    raises :class:`LockHeldError` naming the lock and its holder instead of writing the same
    files. The kernel drops the lock when its process ends, even by SIGKILL: a lock is never
    stale. The file itself stays (deleting a lock file races with its next user); a holder
    that ended normally empties it, so a name still in it when the lock is taken is a holder
    that was killed: ``on_abandoned`` is called with that text.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            found = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            raise LockHeldError(
                f"{path} is held by {found or 'a process that has not written its name yet'}; "
                "another process is writing what it guards: wait for it to end, or stop it, "
                "and run again"
            ) from None
        abandoned = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode("utf-8"), 0)
        try:
            if abandoned and on_abandoned is not None:
                on_abandoned(abandoned)
            yield path
        finally:
            os.ftruncate(fd, 0)  # released: nobody holds it
    finally:
        os.close(fd)
