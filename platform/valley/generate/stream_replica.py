"""One replica of the stream pool: a Ray async actor around one async engine, taking one problem per call.

Many calls run at once on the actor's event loop (the driver bounds how many samples a replica holds), and
they all feed the same engine: vLLM's async engine batches them continuously; the transformers backend
batches whatever is queued when its previous batch ends (`backends/microbatch.py`). A call returns when its
own problem's samples are done, whatever else the engine is still working on.

The replica beats to the stage's watchdog board when it loads its model and when a problem starts and
ends, and `fault_crash_once_file` kills it once on its first problem (tests of the pool's recovery).
"""

from __future__ import annotations

import os
from typing import Any

from valley.generate.backends.base import Completion, Request, Sampling
from valley.generate.backends.factory import make_async_backend
from valley.generate.replica import maybe_crash, register, replica_name
from valley.watchdog import Heartbeat

# vLLM's error for an engine whose core process died: the actor cannot recover it, but Ray can by
# restarting the actor, which only happens if the process exits (the engine's requests are then retried)
ENGINE_DEAD = frozenset({"EngineDeadError"})


class StreamReplica:
    """Ray async actor (see stream_pool.RayFleet): `generate` one problem's samples at a time, many at once."""

    def __init__(self, kind: str, model: str, options: dict[str, Any], sampling: Sampling,
                 fault_crash_once_file: str | None = None, heartbeat_board: Any = None, batch_size: int = 8):
        self.hb = Heartbeat(heartbeat_board, replica_name())
        register(heartbeat_board, self.hb.worker)
        self.hb.beat("model_load", model)
        self.engine = make_async_backend(kind, model, batch_size=batch_size, **options)
        self.hb.beat("ready")
        self.sampling = sampling
        self.fault_crash_once_file = fault_crash_once_file
        self.in_flight = 0  # samples of unfinished calls, for the heartbeat's detail

    async def generate(self, requests: list[Request]) -> list[Completion]:
        """All samples of one problem (any order of arrival; returned in request order)."""
        maybe_crash(self.fault_crash_once_file)
        if not requests:
            return []
        qid = requests[0].question_id
        self.in_flight += len(requests)
        self.hb.beat("generate", f"{qid}: {len(requests)} samples ({self.in_flight} in flight)")
        try:
            done = await self.engine.generate(requests, self.sampling)
        except Exception as exc:
            if type(exc).__name__ in ENGINE_DEAD:
                os._exit(1)  # let Ray restart this replica and retry its problems
            raise
        finally:
            self.in_flight -= len(requests)
        self.hb.beat("problem_done", f"{qid}: {sum(c.n_tokens for c in done)} tokens")
        return done

    async def ready(self) -> str:
        """Answers once the model is loaded (the constructor has run): the replica's board name."""
        return self.hb.worker

    async def close(self) -> None:
        """Shut the engine down (vLLM's core process, the micro-batcher's task) before the actor is killed."""
        self.engine.close()
