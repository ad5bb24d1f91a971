"""No silent stalls: workers report progress to a heartbeat board, the driver fails a stage that stops moving.

A stage's workers (Ray Train ranks, generation replicas) call `Heartbeat.beat(phase, detail)` at every phase
change and unit of work; the beats go to one `HeartbeatBoard` actor, which stamps them with its own clock
(so clocks on different nodes never matter). The driver polls the board while it waits for the stage's work
and, when nothing has moved for `timeout_s`, raises `StallError` naming the phase and the worker that moved
least recently — after tearing the work down (`on_stall`). Where Ray offers no error of its own (a lock a
dead process left, a collective a lost peer never joins, resources that never come), this is what turns a
hang into a message.

The board is a Ray actor rather than files under the run dir because the run dir may be object storage
(no cheap polling) and a beat must cost a stage nothing: it is a fire-and-forget actor call.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

POLL_S = 2.0
# Defaults when a stage's config does not say: minutes on CPU, longer on GPU, where one unit of work (a
# 32K-token step on a 7B model, a vLLM batch of long generations) or loading a large model takes longer.
DEFAULT_TIMEOUT_S = {"cpu": 600.0, "gpu": 1800.0}
ENV_TIMEOUT = "VALLEY_STALL_TIMEOUT_S"  # overrides the default of every stage whose config leaves it unset


def default_timeout(use_gpu: bool, configured: float | None = None) -> float:
    """`configured` if given, else `$VALLEY_STALL_TIMEOUT_S`, else the machine's default."""
    if configured is not None:
        return float(configured)
    if os.environ.get(ENV_TIMEOUT):
        return float(os.environ[ENV_TIMEOUT])
    return DEFAULT_TIMEOUT_S["gpu" if use_gpu else "cpu"]


class StallError(RuntimeError):
    """A stage made no progress for its watchdog's time limit."""

    def __init__(self, stage: str, phase: str, worker: str, idle_s: float, timeout_s: float,
                 workers: dict[str, dict[str, Any]], detail: str = ""):
        self.stage, self.phase, self.worker = stage, phase, worker
        self.idle_s, self.timeout_s, self.workers = idle_s, timeout_s, workers
        others = "; ".join(f"{w}: {s['phase']}{' (' + s['detail'] + ')' if s.get('detail') else ''} "
                           f"{s['age_s']:.0f} s ago" for w, s in sorted(workers.items()))
        super().__init__(
            f"{stage} stalled in phase '{phase}' on worker {worker}: no progress for {idle_s:.0f} s "
            f"(watchdog limit {timeout_s:.0f} s){'; ' + detail if detail else ''}"
            f"{'; last beats: ' + others if others else ''}")

    def record(self) -> dict[str, Any]:
        """What a study stores about the failure."""
        return {"stage": self.stage, "phase": self.phase, "worker": self.worker, "idle_s": round(self.idle_s, 1),
                "timeout_s": self.timeout_s, "workers": self.workers, "message": str(self)}


class HeartbeatBoard:
    """Ray actor (see `start_board`): the last beat of every worker, stamped on arrival."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.workers: dict[str, dict[str, Any]] = {}
        self.handles: dict[str, Any] = {}

    def beat(self, worker: str, phase: str, detail: str = "") -> None:
        prev = self.workers.get(worker, {})
        self.workers[worker] = {"phase": phase, "detail": detail, "at": time.monotonic(),
                                "beats": prev.get("beats", 0) + 1}

    def snapshot(self) -> dict[str, Any]:
        return {"now": time.monotonic(), "started": self.started, "workers": dict(self.workers)}

    def register(self, worker: str, handle: Any) -> None:
        """A worker that is an actor leaves its handle, so a stalled stage can kill it."""
        self.handles[worker] = handle

    def registered(self) -> dict[str, Any]:
        return dict(self.handles)


def start_board() -> Any:
    """A board actor on this node that takes no CPU (beats must never wait for a slot). Ray restarts it if
    it dies (e.g. the node's OOM killer picked it): its beats are lost, so the stall clock restarts too,
    and calls made meanwhile are retried rather than failing the stage. The affinity is hard: a soft one
    let Ray put the board on a worker node while this one was busy starting workers, and a board lost with
    its node left the driver unable to judge a stall."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    cls = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(HeartbeatBoard)
    return cls.options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()


class Heartbeat:
    """Worker side: `beat(phase, detail)` is fire-and-forget; no board (None) makes it a no-op, and a lost
    board never fails the worker (the driver that owns it is gone or done)."""

    def __init__(self, board: Any, worker: str, on_beat: Callable[[str], None] | None = None):
        self.board, self.worker, self.on_beat = board, worker, on_beat

    def beat(self, phase: str, detail: str = "") -> None:
        if self.board is not None:
            try:
                self.board.beat.remote(self.worker, phase, detail)
            except Exception as exc:  # noqa: BLE001 - progress reporting must not break the work
                log.debug("heartbeat to a gone board: %s", exc)
                self.board = None
        if self.on_beat is not None:
            self.on_beat(phase)  # fault-injection hook (tests, drills)

    def register(self, key: str, handle: Any) -> None:
        """Leave an actor handle or placement group for the driver to tear down on a stall."""
        if self.board is not None:
            try:
                self.board.register.remote(key, handle)
            except Exception as exc:  # noqa: BLE001
                log.debug("register with a gone board: %s", exc)


SUPERVISORS = frozenset({"controller", "driver"})  # beat too, but are named only when no worker has beaten


def stall_in(snapshot: dict[str, Any], *, stage: str, timeout_s: float, idle_phase: str,
             idle_detail: str = "") -> StallError | None:
    """Pure: the stall in `snapshot`, if nothing has moved for `timeout_s`. The named worker is the one
    whose last beat is oldest (a supervisor only if no worker beat); with no beats at all, the stage never
    got going (`idle_phase`)."""
    now, workers = snapshot["now"], snapshot["workers"]
    ages = {w: {"phase": s["phase"], "detail": s.get("detail", ""), "age_s": round(now - s["at"], 1),
                "beats": s.get("beats", 0)} for w, s in workers.items()}
    last_move = max([snapshot["started"], *(s["at"] for s in workers.values())])
    idle = now - last_move
    if idle <= timeout_s:
        return None
    if not workers:
        return StallError(stage, idle_phase, "none started", idle, timeout_s, {}, idle_detail)
    candidates = [w for w in ages if w not in SUPERVISORS] or list(ages)
    worker = max(candidates, key=lambda w: (ages[w]["age_s"], w))
    return StallError(stage, ages[worker]["phase"], worker, ages[worker]["age_s"], timeout_s, ages,
                      ages[worker]["detail"])


def kill_registered(board: Any) -> int:
    """Kill (without restart) every actor, and remove every placement group, registered on the board;
    returns how many. (A placement group made by an actor lives as long as the job, not the actor.)"""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    try:
        handles = ray.get(board.registered.remote(), timeout=60)
    except Exception as exc:  # noqa: BLE001 - a board that is gone: nothing known to tear down
        log.warning("could not read what to tear down from the heartbeat board: %s", exc)
        return 0
    for handle in handles.values():
        try:
            if isinstance(handle, PlacementGroup):
                remove_placement_group(handle)
            else:
                ray.kill(handle, no_restart=True)
        except Exception as exc:  # noqa: BLE001 - already gone
            log.debug("tear down %s: %s", handle, exc)
    return len(handles)


def _snapshot(board: Any) -> dict[str, Any] | None:
    """The board's state; None when it does not answer in time (an overloaded node: judge next poll)."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    try:
        return ray.get(board.snapshot.remote(), timeout=60)
    except (GetTimeoutError, RayActorError) as exc:
        log.warning("the heartbeat board did not answer (%s); checking again at the next poll", type(exc).__name__)
        return None


def watch_ref(ref: Any, board: Any, *, stage: str, timeout_s: float, idle_phase: str, idle_detail: str = "",
              on_stall: Callable[[StallError], None] | None = None, poll_s: float = POLL_S) -> Any:
    """Wait for `ref` (a Ray task/actor call) while watching the board; its value, or `StallError` after
    `on_stall` (which should tear the work down)."""
    import ray

    while True:
        ready, _ = ray.wait([ref], timeout=poll_s)
        if ready:
            return ray.get(ref)
        err = _board_stall(board, stage, timeout_s, idle_phase, idle_detail)
        if err is not None:
            raise _stalled(err, on_stall)


_END = object()


def watch_iter(items: Iterator[Any], board: Any, *, stage: str, timeout_s: float, idle_phase: str,
               idle_detail: str = "", on_stall: Callable[[StallError], None] | None = None,
               poll_s: float = POLL_S) -> Iterator[Any]:
    """Yield `items` (pulled on a helper thread, so a blocked `next` cannot block the watch) while watching
    the board; every item is progress too. On a stall, `on_stall` then `StallError`; the helper thread is
    a daemon and is left to the teardown."""
    q: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()  # the consumer is gone: stop pulling and close `items` (its finally runs)
    last_item = time.monotonic()  # this clock, not the board's: the two may be on different nodes

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def pull() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    break
            else:
                put((True, _END))
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread
            put((False, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    threading.Thread(target=pull, name=f"{stage}-watched", daemon=True).start()
    try:
        yield from _consume(q, board, last_item, stage=stage, timeout_s=timeout_s, idle_phase=idle_phase,
                            idle_detail=idle_detail, on_stall=on_stall, poll_s=poll_s)
    finally:
        stop.set()


def _consume(q: queue.Queue, board: Any, last_item: float, *, stage: str, timeout_s: float, idle_phase: str,
             idle_detail: str, on_stall: Callable[[StallError], None] | None, poll_s: float) -> Iterator[Any]:
    while True:
        try:
            ok, item = q.get(timeout=poll_s)
        except queue.Empty:
            idle = time.monotonic() - last_item
            if idle <= timeout_s:
                continue
            if board is None:  # no workers reporting: the wait itself is the stall
                err = StallError(stage, idle_phase, "driver", idle, timeout_s, {}, idle_detail)
            else:
                err = _board_stall(board, stage, timeout_s, idle_phase, idle_detail)
            if err is not None:
                raise _stalled(err, on_stall) from None
            continue
        if not ok:
            raise item
        if item is _END:
            return
        last_item = time.monotonic()
        yield item


def _board_stall(board: Any, stage: str, timeout_s: float, idle_phase: str, idle_detail: str) -> StallError | None:
    """The stall the board's last beats show, if any (None also when the board cannot be read)."""
    snapshot = _snapshot(board)
    if snapshot is None:
        return None
    return stall_in(snapshot, stage=stage, timeout_s=timeout_s, idle_phase=idle_phase, idle_detail=idle_detail)


def _stalled(err: StallError, on_stall: Callable[[StallError], None] | None) -> StallError:
    """Log a stall and let the caller tear its work down; returns the error for the caller to raise."""
    log.error("%s", err)
    if on_stall is not None:
        on_stall(err)
    return err
