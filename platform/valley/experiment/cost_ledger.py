"""What each stage of an experiment cost: wall time, and core- and GPU-seconds reserved, per stage and run.

`valley run` times every stage call through `timed` and keeps one record per (stage, stage config name)
in `<storage>/experiments/<experiment>/costs.json`. A stage that was already finished (skipped on this
run) keeps the record of the run that did the work, so the report of a resumed experiment still shows
what the whole study cost. Core/GPU-seconds are wall time × what the stage holds for that time: a train
run's workers (CPUs and one GPU each), a generate pool's replicas (CPUs, and GPUs × tensor parallelism
under vLLM), and the cluster's CPUs (or its `grader` slots) for the CPU-parallel stages — reserved
capacity, an upper bound on what was busy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from valley import registry
from valley.storage import Storage

T = TypeVar("T")
_ACTIVE: CostLedger | None = None


class CostLedger:
    """The cost records of one experiment, persisted after every stage."""

    def __init__(self, storage: Storage, experiment: str):
        self.storage, self.parts = storage, ("experiments", experiment, "costs.json")
        self.records: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()  # the study runs stages on several threads at once
        if storage.exists(*self.parts):
            self.records = {f"{r['stage']}/{r['run']}": r for r in storage.read_json(*self.parts)}

    def record(self, stage: str, run: str, wall_s: float, cpus: float, gpus: float, skipped: bool,
               facts: dict[str, Any] | None = None) -> None:
        """One stage run's cost; `facts`: what the stage adds about the work done (a train run's trained
        tokens, steps and their size)."""
        key = f"{stage}/{run}"
        with self._lock:
            if skipped and key in self.records:
                return  # keep the timing of the run that did the work
            self.records[key] = {"stage": stage, "run": run, "wall_s": round(wall_s, 2),
                                 "core_s": round(wall_s * cpus, 1), "gpu_s": round(wall_s * gpus, 1),
                                 "cpus": cpus, "gpus": gpus, "timed_when_skipped": skipped,
                                 **(facts or {})}
            self.storage.write_json(list(self.records.values()), *self.parts)

    def rows(self) -> list[dict[str, Any]]:
        return list(self.records.values())


def _cluster() -> dict[str, float]:
    try:
        import ray

        return dict(ray.cluster_resources()) if ray.is_initialized() else {}
    except Exception:  # noqa: BLE001 - costs are reporting, never a reason to fail a stage
        return {}


def reserved(stage: str, cfg: Any) -> tuple[float, float]:
    """(CPUs, GPUs) a stage holds while it runs, from its config and the cluster (the registry's rule)."""
    return registry.stage(stage).reserved(cfg, _cluster())


def timed(stage: str, cfg: Any, storage: Storage, run: Callable[[Any, Storage], T] | None = None) -> T:
    """Run a stage (the registry's run function, or `run`) and record its cost in the active ledger, if
    `valley run` set one."""
    t0 = time.perf_counter()
    result = (run or registry.stage(stage).run_function())(cfg, storage)
    if _ACTIVE is not None:
        cpus, gpus = reserved(stage, cfg)
        facts = result.cost_facts() if hasattr(result, "cost_facts") else None
        _ACTIVE.record(stage, cfg.name or stage, time.perf_counter() - t0, cpus, gpus,
                       bool(getattr(result, "skipped", False)), facts)
    return result


def activate(ledger: CostLedger | None) -> None:
    """Make `ledger` the one `timed` writes to (None: stop recording)."""
    global _ACTIVE
    _ACTIVE = ledger
