"""The stream of training-query batches that the query loss reads beside the triplets."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["QuerySampler", "check_batching"]


def check_batching(batch_size: int, rank: int, world_size: int) -> None:
    """A sampler's batch size and data-parallel rank, checked before anything is read."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


class QuerySampler:
    """Shuffled epochs of training-query ids (positions into the train query list).

    ``code_index[i]`` is the code of query ``i`` (its positive). Batches are always full; an
    epoch's leftover ids start the next epoch's first batch. With ``world_size`` > 1 each rank
    gets a disjoint slice of every batch-sized chunk.
    """

    def __init__(
        self,
        code_index: np.ndarray,
        batch_size: int,
        seed: int,
        *,
        n_batches: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.code_index = np.asarray(code_index, dtype=np.int64)
        if self.code_index.ndim != 1 or self.code_index.size == 0:
            raise ValueError("code_index must be a non-empty 1-d array")
        check_batching(batch_size, rank, world_size)
        self.batch_size, self.seed, self.n_batches = batch_size, seed, n_batches
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[np.ndarray]:
        rng = np.random.default_rng([self.seed, 0x0E7])
        n, chunk = self.code_index.size, self.batch_size * self.world_size
        pending = np.empty(0, dtype=np.int64)
        produced = 0
        while True:
            while pending.size < chunk:
                pending = np.concatenate((pending, rng.permutation(n)))
            ids, pending = pending[:chunk], pending[chunk:]
            yield ids[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
            produced += 1
            if self.n_batches is not None and produced >= self.n_batches:
                return
