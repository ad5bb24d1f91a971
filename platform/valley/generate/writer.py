"""Streams completions into `samples/part-*.parquet`, closing parts on problem boundaries.

A problem's samples are written together once all of them are back, so a part on disk only ever
holds finished problems; resume therefore needs nothing but the (question_id, sample_idx) pairs
already on disk. A part closes when `part_size` samples of finished problems wait, or when the oldest of
them has waited `flush_s` seconds (checked as completions arrive), so during a long stage finished
problems reach disk, and a grade node following the stage, within about `flush_s`.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable

import pyarrow as pa

from valley import schemas
from valley.generate.backends.base import Completion
from valley.storage import Storage

SAMPLES_DIR = "samples"


class SampleWriter:
    """Buffers completions per problem; writes a part when `part_size` samples of finished problems wait or
    the first of them has waited `flush_s` seconds (None: only by size)."""

    def __init__(self, storage: Storage, stage_dir: str, *, run_id: str, model: str, backend: str,
                 prompts: dict[str, str], expected: dict[str, int], part_size: int, flush_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.storage, self.stage_dir = storage, stage_dir
        self.run_id, self.model, self.backend = run_id, model, backend
        self.prompts = prompts
        self.remaining = dict(expected)  # question_id -> samples still to come in this run
        self.part_size = part_size
        self.flush_s, self.clock = flush_s, clock
        self.ready_since: float | None = None  # when the oldest finished problem not yet on disk finished
        self.pending: dict[str, list[Completion]] = defaultdict(list)
        self.ready: list[Completion] = []
        self.parts: list[str] = []
        self.written = 0
        self.tokens = 0
        self.finish_reasons: Counter = Counter()
        self._seq = len(storage.list(stage_dir, SAMPLES_DIR, suffix=".parquet"))

    def add(self, completions: list[Completion]) -> None:
        for c in completions:
            if c.question_id not in self.remaining:
                raise RuntimeError(f"backend returned a sample for unknown problem {c.question_id!r}")
            self.pending[c.question_id].append(c)
            self.remaining[c.question_id] -= 1
            if self.remaining[c.question_id] < 0:
                raise RuntimeError(f"more samples of {c.question_id!r} came back than were asked for")
            if self.remaining[c.question_id] == 0:
                self.ready.extend(sorted(self.pending.pop(c.question_id), key=lambda x: x.sample_idx))
                if self.ready_since is None:
                    self.ready_since = self.clock()
        if len(self.ready) >= self.part_size or self._waited_long():
            self.flush()

    def _waited_long(self) -> bool:
        return (self.flush_s is not None and self.ready_since is not None
                and self.clock() - self.ready_since >= self.flush_s)

    def flush(self) -> None:
        if not self.ready:
            return
        rows, self.ready, self.ready_since = self.ready, [], None
        table = pa.table(
            {
                "run_id": [self.run_id] * len(rows),
                "question_id": [c.question_id for c in rows],
                "sample_idx": [c.sample_idx for c in rows],
                "prompt": [self.prompts[c.question_id] for c in rows],
                "response": [c.text for c in rows],
                "n_tokens": [c.n_tokens for c in rows],
                "finish_reason": [c.finish_reason for c in rows],
                "model": [self.model] * len(rows),
                "backend": [self.backend] * len(rows),
            }
        )
        name = f"part-{self._seq:05d}-{uuid.uuid4().hex[:8]}.parquet"
        self._seq += 1
        self.storage.write_parquet(table, self.stage_dir, SAMPLES_DIR, name, schema=schemas.SAMPLES)
        self.parts.append(name)
        self.written += len(rows)
        self.tokens += sum(c.n_tokens for c in rows)
        self.finish_reasons.update(c.finish_reason for c in rows)

    def close(self) -> None:
        """Write what is left; every expected sample must have arrived."""
        self.flush()
        missing = {q: n for q, n in self.remaining.items() if n}
        if missing:
            raise RuntimeError(f"{sum(missing.values())} samples never came back (e.g. {next(iter(missing))!r})")
