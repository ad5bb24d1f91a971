"""The stream pool (`pool.mode: stream`): replicas fed problem by problem, results per problem.

Why not batch-at-a-time: a batch returns when its longest sequence ends, so with reasoning outputs of 1K to
32K tokens an engine spends most of a batch nearly empty. Here the driver keeps every replica holding up to
`pool.max_in_flight` samples (whole problems, one Ray task each), hands the next problem to the least-loaded
replica the moment one finishes, and yields each problem as soon as its task returns, so the writer can
close parts (and a following grade node can start) while long problems are still generating.

Why not `ray.data.llm` (Ray's vLLM batch processor, which also feeds an async engine continuously): its
rows carry no finish reason (stop / length / context is the stage's record of completion), it can only host
vLLM (the transformers backend, the CPU default, could not use the pool at all), and a dead replica's
batch is re-run whole and returned as one block, where here only the lost problems are re-sent and
everything finished has already been yielded.

Failures: replicas are actors with `max_restarts` = `max_task_retries` = `pool.max_retries`, so Ray restarts
a dead replica and re-runs the problems it held. A problem whose replica is lost beyond that is re-sent by
the driver to a fresh replica, up to `pool.max_retries` times, then the pool fails naming the problem. A
problem is yielded once, when its task succeeds: a re-sent problem has no other live task (and the
sample writer, which every pool feeds, refuses samples of a problem beyond those asked for).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from typing import Any, Protocol

from valley.generate.backends.base import Completion, Request, Sampling
from valley.generate.config import GenerateConfig
from valley.generate.replica import worker_args

log = logging.getLogger(__name__)

WAIT_S = 5.0  # longest single wait for a result, so the loop notices a closed consumer now and then


class ReplicaLost(RuntimeError):
    """The replica running a problem died (and Ray's own restarts and retries did not save the call)."""


class Fleet(Protocol):
    """What the scheduling loop needs from the replicas (Ray actors in the stage, fakes in unit tests)."""

    def start(self, slot: int) -> Any:
        """A new replica for `slot`; returns its handle."""

    def submit(self, replica: Any, requests: list[Request]) -> Any:
        """Start one problem's samples on `replica`; returns a reference to wait on."""

    def wait(self, refs: list[Any], timeout_s: float) -> list[Any]:
        """The refs among `refs` that are done (none when `timeout_s` passes first)."""

    def result(self, ref: Any) -> list[Completion]:
        """The completions of a done ref; `ReplicaLost` if its replica died."""

    def stop(self, replica: Any) -> None:
        """Shut a replica down (it may already be dead)."""


def group_by_problem(requests: list[Request]) -> list[list[Request]]:
    """One group per problem, in first-seen order: the unit a replica takes and the writer needs whole."""
    groups: dict[str, list[Request]] = {}
    for r in requests:
        groups.setdefault(r.question_id, []).append(r)
    return list(groups.values())


def stream(groups: list[list[Request]], fleet: Fleet, *, replicas: int, max_in_flight: int,
           max_retries: int) -> Iterator[list[Completion]]:
    """Yield each group's completions once, as groups finish, keeping each replica at most `max_in_flight`
    samples busy (a bigger group still runs, alone). A group whose replica is lost is re-sent (to a fresh
    replica in that slot) at most `max_retries` times; after that, `RuntimeError`."""
    pending: deque[tuple[list[Request], int]] = deque((g, 0) for g in groups if g)
    slots = [fleet.start(i) for i in range(replicas)]
    load = [0] * replicas  # samples submitted to each slot and not yet back
    running: dict[Any, tuple[int, Any, list[Request], int]] = {}  # ref -> slot, replica, group, failures
    try:
        while pending or running:
            while pending:
                slot = min(range(replicas), key=lambda s: (load[s], s))
                group, failures = pending[0]
                if load[slot] and load[slot] + len(group) > max_in_flight:
                    break  # every replica is full: wait for one to finish something
                pending.popleft()
                running[fleet.submit(slots[slot], group)] = (slot, slots[slot], group, failures)
                load[slot] += len(group)
            for ref in fleet.wait(list(running), WAIT_S):
                slot, replica, group, failures = running.pop(ref)
                load[slot] -= len(group)
                qid = group[0].question_id
                try:
                    done = fleet.result(ref)
                except ReplicaLost as exc:
                    if failures >= max_retries:
                        raise RuntimeError(f"problem {qid!r} lost its replica {failures + 1} times "
                                           f"(pool.max_retries={max_retries}); last error: {exc}") from exc
                    log.warning("replica lost while generating %s (%s); re-sending %d/%d", qid, exc,
                                failures + 1, max_retries)
                    if slots[slot] is replica:  # the first news of this loss: a fresh replica takes the slot
                        fleet.stop(replica)
                        slots[slot] = fleet.start(slot)
                    pending.appendleft((group, failures + 1))
                    continue
                yield done
    finally:
        for replica in slots:
            fleet.stop(replica)


class RayFleet:
    """Replicas as Ray async actors (`StreamReplica`) with the pool's resources and restart budget."""

    def __init__(self, cfg: GenerateConfig, board: Any = None, sampling: Sampling | None = None):
        import ray

        from valley.generate.stream_replica import StreamReplica

        pool = cfg.pool
        self.actor = ray.remote(StreamReplica).options(
            num_cpus=pool.num_cpus, num_gpus=cfg.replica_gpus(),
            max_restarts=pool.max_retries, max_task_retries=pool.max_retries,
            max_concurrency=max(1000, pool.in_flight(cfg.backend) + 8))
        self.args = {**worker_args(cfg, board, sampling), "batch_size": pool.batch_size}

    def start(self, slot: int) -> Any:
        return self.actor.remote(**self.args)

    def submit(self, replica: Any, requests: list[Request]) -> Any:
        return replica.generate.remote(requests)

    def wait(self, refs: list[Any], timeout_s: float) -> list[Any]:
        import ray

        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout_s)
        if ready:  # and whatever else is done by now
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        return ready

    def result(self, ref: Any) -> list[Completion]:
        import ray
        from ray.exceptions import RayActorError

        try:
            return ray.get(ref)
        except RayActorError as exc:
            raise ReplicaLost(f"{type(exc).__name__}: {exc}") from exc

    def stop(self, replica: Any) -> None:
        import ray

        try:  # let the engine shut its own processes down, then end the actor
            ray.get(replica.close.remote(), timeout=60)
        except Exception as exc:  # noqa: BLE001 - dead, or never loaded: nothing left to close
            log.debug("closing a stream replica: %s", exc)
        ray.kill(replica, no_restart=True)


def run_stream(requests: list[Request], cfg: GenerateConfig, board: Any = None,
               sampling: Sampling | None = None) -> Iterator[list[Completion]]:
    """The stream pool over `requests` with the config's replicas, in-flight bound and retry budget
    (`sampling`: instead of the config's, for benchmarks)."""
    pool = cfg.pool
    return stream(group_by_problem(requests), RayFleet(cfg, board, sampling), replicas=pool.replicas,
                  max_in_flight=pool.in_flight(cfg.backend), max_retries=pool.max_retries)
