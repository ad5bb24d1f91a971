"""What every kind of generation replica shares: the backend's options and sampling from the config, the
fault hook, and how a replica names itself and registers on the watchdog board.

Kept apart from the pools (pool.py: Ray Data, Serve, local; stream_pool.py: the continuous pool) so each
pool can use it without importing the other.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from valley.generate.backends.base import Sampling
from valley.generate.config import GenerateConfig


def backend_options(cfg: GenerateConfig) -> dict[str, Any]:
    """Constructor options of the configured backend (unknown ones are ignored by each backend)."""
    return {
        "dtype": cfg.dtype,
        "num_threads": max(1, int(cfg.pool.num_cpus)) if cfg.pool.num_cpus else None,
        "tensor_parallel_size": cfg.pool.tensor_parallel_size,
        "max_model_len": cfg.max_model_len,
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "hf_overrides": cfg.model_overrides() or None,
    }


def sampling_of(cfg: GenerateConfig) -> Sampling:
    """The stage's one sampling setting (every request shares it; seeds and budgets are per request)."""
    return Sampling(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens)


def worker_args(cfg: GenerateConfig, board: Any = None, sampling: Sampling | None = None) -> dict[str, Any]:
    """Constructor arguments of a replica of any pool (`sampling`: instead of the config's, for benchmarks)."""
    return {"kind": cfg.backend, "model": cfg.model, "options": backend_options(cfg),
            "sampling": sampling or sampling_of(cfg),
            "fault_crash_once_file": cfg.pool.fault_crash_once_file, "heartbeat_board": board}


def maybe_crash(marker: str | None) -> None:
    """Testing hook (see PoolConfig.fault_crash_once_file): die once, the way a lost node or OOM kill would."""
    if marker and not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        os._exit(1)


def replica_name() -> str:
    """How a replica appears on the watchdog board (a restarted replica is a new process, a new name)."""
    return f"replica pid {os.getpid()}@{socket.gethostname()}"


def register(board: Any, name: str) -> None:
    """An actor replica leaves its handle on the board, so a stalled pool can be killed replica by replica."""
    if board is None:
        return
    try:
        import ray

        board.register.remote(name, ray.get_runtime_context().current_actor)
    except Exception:  # noqa: BLE001 - not an actor (local mode) or no Ray: nothing to kill later
        pass
