"""A batch-at-a-time backend (transformers) behind the async interface of the stream pool.

Hugging Face `generate` has no continuous batching: a batch runs until its longest row is done, and no
row can join a batch in flight. The best a replica can do is not to wait for a fixed batch to fill: this
gathers whatever requests are queued when the engine frees up (up to `batch_size`, of any problems) into
one `generate` call, run on a worker thread so the replica keeps accepting problems meanwhile, one batch at
a time (the model is not safe to run twice at once, and one batch already uses the replica's cores).
Per-sample seeds make a sample independent of its batch-mates, so the micro-batches' composition, which
depends on timing, never changes a token.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from valley.generate.backends.base import AsyncBackend, Backend, Completion, Request, Sampling


@dataclass
class _Queued:
    request: Request
    sampling: Sampling
    done: asyncio.Future = field(repr=False)


class MicroBatcher(AsyncBackend):
    """Feeds a sync `Backend` from a queue, one batch of up to `batch_size` queued requests at a time."""

    def __init__(self, backend: Backend, batch_size: int):
        self.backend = backend
        self.name = backend.name
        self.batch_size = max(1, batch_size)
        self._queue: list[_Queued] = []
        self._wake: asyncio.Event | None = None
        self._runner: asyncio.Task | None = None

    async def generate(self, requests: list[Request], sampling: Sampling) -> list[Completion]:
        loop = asyncio.get_running_loop()
        items = [_Queued(r, sampling, loop.create_future()) for r in requests]
        self._queue.extend(items)
        self._ensure_runner()
        self._wake.set()
        return list(await asyncio.gather(*(i.done for i in items)))

    def _ensure_runner(self) -> None:
        if self._runner is None or self._runner.done():
            self._wake = asyncio.Event()
            self._runner = asyncio.get_running_loop().create_task(self._run())

    def _take(self) -> list[_Queued]:
        """The next batch: queued requests in arrival order that share the first one's sampling."""
        first = self._queue[0].sampling
        batch = [q for q in self._queue if q.sampling == first][: self.batch_size]
        taken = {id(q) for q in batch}
        self._queue = [q for q in self._queue if id(q) not in taken]
        return batch

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._take()
            try:
                out = await asyncio.to_thread(self.backend.generate, [q.request for q in batch], batch[0].sampling)
            except Exception as exc:  # noqa: BLE001 - every caller of this batch gets the error
                for q in batch:
                    if not q.done.done():
                        q.done.set_exception(exc)
                continue
            for q, completion in zip(batch, out, strict=True):
                if not q.done.done():
                    q.done.set_result(completion)

    def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
        self.backend.close()
