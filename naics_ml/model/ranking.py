"""The one tie rule of every retrieval figure: a true candidate tied with others ranks behind
them (pessimistic), so a model that puts every code at one distance scores no hits."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # torch is not imported for the numpy callers
    import numpy as np
    import torch

__all__ = ["pessimistic_rank"]

Array = TypeVar("Array", "np.ndarray", "torch.Tensor")


def pessimistic_rank(distance: Array, true_distance: Array) -> Array:
    """1-based rank of each query's true candidate: the candidates at a distance no larger than
    its own. ``distance`` is (queries, candidates), ``true_distance`` (queries,); numpy or torch."""
    return (distance <= true_distance[:, None]).sum(1)
