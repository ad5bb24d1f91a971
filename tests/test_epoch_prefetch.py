"""The next epoch's rows read in the background: the same items in the same order, read before they are
asked for, an error raised where the rows are needed."""

from __future__ import annotations

import threading
import time

import pytest

from valley.train.epoch_prefetch import Prefetched


def test_items_come_whole_and_in_order_with_the_head_read_ahead():
    read: list[int] = []
    opened = threading.Event()

    def source():
        opened.set()
        for i in range(7):
            read.append(i)
            yield i

    ahead = Prefetched(source, ahead=3)
    assert opened.wait(5)
    deadline = time.monotonic() + 5
    while len(read) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert read == [0, 1, 2]  # one step's micro-batches, no more, before anyone asks
    assert list(ahead.take()) == list(range(7))


def test_a_slow_start_overlaps_the_callers_work():
    def slow_source():
        time.sleep(0.5)  # Ray Data starting an execution
        yield from "abc"

    t0 = time.monotonic()
    ahead = Prefetched(slow_source, ahead=1)
    time.sleep(0.5)  # the current epoch's last steps
    items = list(ahead.take())
    assert items == ["a", "b", "c"]
    assert time.monotonic() - t0 < 0.9


def test_a_short_source_and_a_failing_one():
    assert list(Prefetched(lambda: iter([1]), ahead=4).take()) == [1]

    def broken():
        raise OSError("shard unreadable")
        yield  # pragma: no cover

    ahead = Prefetched(broken, ahead=2)
    with pytest.raises(OSError, match="shard unreadable"):
        ahead.take()
