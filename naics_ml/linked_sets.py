"""Folders of files that are replaced as one set: the four Census workbooks, the triplet shards.

Renaming files (or sector folders) into place one by one keeps each whole, but a kill between
two renames leaves a mix of two versions. Here the destination (``<rev>/census``) is a relative
symbolic link to a folder holding one complete set (``census-<16 hex>``). A writer fills a
hidden staging folder beside it, renames that to a new set folder, and swaps the link with one
``os.replace``: readers see the old set or the new one, never a mix. Earlier sets are removed
after the switch. What a killed writer leaves (staging folders, links not yet swapped in) is
removed by the next writer once the killed process is gone. A destination that is still a plain
folder (the older layout) is moved aside and converted. If a writer is killed just then, the
next writer puts the folder back.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

from naics_ml.io import orphans, remove_orphans, staging_name

__all__ = ["current_set", "new_set_version", "prepare_set", "publish_set", "staging_folder"]


def prepare_set(dest: Path) -> None:
    """Before writing ``dest`` anew: recover an older-layout folder a killed writer moved aside,
    and remove what killed writers left beside ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists() and not dest.is_symlink():
        moved = sorted(orphans(dest.parent, dest.name, ".legacy"), key=lambda p: p.stat().st_mtime)
        if moved:
            os.rename(moved[-1], dest)
    for suffix in ("", ".link", ".legacy"):
        remove_orphans(dest.parent, dest.name, suffix)


def staging_folder(dest: Path) -> Path:
    """A new hidden folder beside ``dest`` to fill with the next set."""
    folder = dest.parent / staging_name(dest.name)
    folder.mkdir()
    return folder


def current_set(dest: Path) -> Path | None:
    """The folder ``dest`` shows now (its set, or an older-layout plain folder); None if none."""
    return dest.resolve() if dest.is_dir() else None


def new_set_version() -> str:
    """A version name for a set with no content digest of its own."""
    return uuid.uuid4().hex[:16]


def publish_set(staging: Path, dest: Path, version: str) -> Path:
    """Make the complete folder ``staging`` what ``dest`` shows, in one atomic step; returns the
    set folder ``<dest>-<version>``. A set of that version already in place is kept (the same
    contents: ``version`` is their digest) and ``staging`` is left to the caller to delete."""
    if not re.fullmatch(r"[0-9a-f]{16}", version):
        raise ValueError(f"a set version is 16 hex digits, got {version!r}")
    target = dest.parent / f"{dest.name}-{version}"
    if not target.is_dir():
        _fsync_dir(staging)
        os.rename(staging, target)
    link = dest.parent / staging_name(dest.name, ".link")
    os.symlink(target.name, link)  # relative: the artifacts root may move or be mounted
    legacy = None
    if dest.is_dir() and not dest.is_symlink():  # a plain folder of the older layout
        legacy = dest.parent / staging_name(dest.name, ".legacy")
        os.rename(dest, legacy)  # killed before the next line: prepare_set puts it back
    os.replace(link, dest)  # the switch
    _fsync_dir(dest.parent)
    if legacy is not None:
        shutil.rmtree(legacy, ignore_errors=True)
    earlier = re.compile(rf"{re.escape(dest.name)}-[0-9a-f]{{16}}")
    for entry in dest.parent.iterdir():
        if entry.name != target.name and earlier.fullmatch(entry.name):
            shutil.rmtree(entry, ignore_errors=True)
    return target


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (renames) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
