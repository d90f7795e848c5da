"""Batches prepared ahead in a background thread, so shard reading overlaps the training step;
the order is the source's, and an error in the thread is raised in the consumer."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["prefetched"]

T = TypeVar("T")


@dataclass(frozen=True)
class _Failure:
    error: BaseException


def prefetched(source: Iterator[T], depth: int) -> Iterator[T]:
    """Run ``source`` in a daemon thread, ``depth`` items ahead; errors re-raise here.

    Closing (or dropping) the returned generator stops the thread at its next item.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in source:
                if not put(item):
                    return
            put(done)
        except BaseException as exc:
            put(_Failure(exc))

    def consume() -> Iterator[T]:
        thread = threading.Thread(target=work, name="triplet-sampler-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = items.get()
                if item is done:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            stop.set()

    return consume()
