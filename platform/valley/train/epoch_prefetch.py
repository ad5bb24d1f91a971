"""The next epoch's first micro-batches, read while this epoch trains.

Each epoch is its own Ray Data execution (read, seeded shuffle, split over the ranks: train/stage.py), and
it starts only when the ranks first ask for its rows. Asked at the epoch boundary, every rank waited for
the whole start-up: on 2 CPU cores 4.3 s between two 2-second steps (benchmarks/bench_train.py). A rank
now opens the next epoch's shard in a background thread when an epoch starts and reads one step's
micro-batches from it, so the execution runs beside the training and the first step of the next epoch
finds its rows read. The order of the rows is the execution's own, so nothing about which rows a step
trains changes. The cost: the next epoch's shuffled rows can sit in Ray's object store beside this one's.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Prefetched(Generic[T]):
    """An iterator opened and read `ahead` items deep in a daemon thread; `take` hands it over whole.

    Only one thread ever advances the iterator: the background one until it stops, then the caller of
    `take`, which waits for it. An error in the background is raised by `take`, where the rows are needed."""

    def __init__(self, open_source: Callable[[], Iterator[T]], ahead: int, name: str = "prefetch") -> None:
        self._head: list[T] = []
        self._rest: Iterator[T] = iter(())
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, args=(open_source, max(0, ahead)), name=name,
                                        daemon=True)
        self._thread.start()

    def _read(self, open_source: Callable[[], Iterator[T]], ahead: int) -> None:
        try:
            source = open_source()
            self._head.extend(itertools.islice(source, ahead))
            self._rest = source
        except BaseException as exc:  # handed to the consumer, which fails the step that needed the rows
            self._error = exc

    def take(self) -> Iterator[T]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return itertools.chain(self._head, self._rest)
