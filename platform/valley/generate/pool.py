"""The generation pool: the same backend fed continuously by Ray actors, run as Ray Data actors, a Ray
Serve deployment, or in-process.

* "stream" (the default): one Ray actor per replica, fed problem by problem so its engine never idles
  behind a batch's longest sequence; each problem's samples come back as soon as they are done
  (`stream_pool.py`, which the benchmark's `--longtail` compares with "data").
* "data": `map_batches` over a fixed actor pool (one engine per actor, `num_gpus` = tensor parallel
  size for vLLM). Ray Data restarts a dead actor and re-runs its batch (`max_restarts`,
  `max_task_retries`), and streams finished batches back while the rest are still generating.
* "serve": a deployment with autoscaling replicas used through a handle; a long-lived shared pool
  when `keep_serving` is set. Serve's controller replaces a dead replica; the driver re-sends the
  batch that failed (up to `max_retries`).
* "local": the backend in this process; the baseline the benchmark compares the pool against.

All modes yield lists of `Completion` as batches (stream: problems) finish, so the stage can write Parquet parts
while generation goes on. Every replica reports to the stage's watchdog board (valley.watchdog) when it
loads its model and when it starts and finishes a batch, so a stalled pool is named, not waited on.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterator
from typing import Any

from valley.generate.backends.base import Completion, Request, Sampling
from valley.generate.backends.factory import make_backend
from valley.generate.config import GenerateConfig
from valley.generate.replica import maybe_crash, register, replica_name, worker_args
from valley.watchdog import Heartbeat

log = logging.getLogger(__name__)

POOL_REQUEST_COLUMNS = ("question_id", "sample_idx", "prompt", "seed", "max_tokens")  # max_tokens 0: the stage's


class GenerateWorker:
    """One replica: holds one backend and turns a batch of requests into completions."""

    def __init__(self, kind: str, model: str, options: dict[str, Any], sampling: Sampling,
                 fault_crash_once_file: str | None = None, heartbeat_board: Any = None):
        self.hb = Heartbeat(heartbeat_board, replica_name())
        register(heartbeat_board, self.hb.worker)
        self.hb.beat("model_load", model)
        self.backend = make_backend(kind, model, **options)
        self.hb.beat("ready")
        self.sampling = sampling
        self.fault_crash_once_file = fault_crash_once_file
        # Serve may call a replica from several threads; an engine (vllm.LLM, an HF model) is fed one
        # batch at a time, the batch size is what controls how much it works on at once.
        self._lock = threading.Lock()

    def run(self, requests: list[Request]) -> list[Completion]:
        maybe_crash(self.fault_crash_once_file)
        with self._lock:
            self.hb.beat("generate", f"batch of {len(requests)} from {requests[0].question_id if requests else '-'}")
            done = self.backend.generate(requests, self.sampling)
            self.hb.beat("batch_done", f"{len(done)} samples")
            return done

    # Ray Data entry point: a columnar batch in, a columnar batch out.
    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        requests = [Request(str(q), int(i), str(p), int(s), int(m) or None)
                    for q, i, p, s, m in zip(*(batch[c] for c in POOL_REQUEST_COLUMNS), strict=True)]
        return completions_to_columns(self.run(requests))


class GenerateServer(GenerateWorker):
    """Ray Serve replica: the worker behind a handle method that takes plain dicts."""

    def generate(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        done = self.run([Request(**r) for r in requests])
        return [c.__dict__ for c in done]


def completions_to_columns(done: list[Completion]) -> dict[str, list]:
    return {
        "question_id": [c.question_id for c in done],
        "sample_idx": [c.sample_idx for c in done],
        "text": [c.text for c in done],
        "n_tokens": [c.n_tokens for c in done],
        "finish_reason": [c.finish_reason for c in done],
    }


def columns_to_completions(batch: dict[str, Any]) -> list[Completion]:
    return [Completion(str(q), int(i), str(t), int(n), str(f))
            for q, i, t, n, f in zip(batch["question_id"], batch["sample_idx"], batch["text"],
                                     batch["n_tokens"], batch["finish_reason"], strict=True)]


def _chunks(requests: list[Request], size: int) -> Iterator[list[Request]]:
    for start in range(0, len(requests), size):
        yield requests[start:start + size]


def run_pool(requests: list[Request], cfg: GenerateConfig, board: Any = None,
             sampling: Sampling | None = None) -> Iterator[list[Completion]]:
    """Generate every request with the configured pool; yields batches of completions as they finish.
    `board`: the stage watchdog's heartbeat board that replicas report progress to (None: no reports).
    `sampling`: instead of the config's (benchmarks: `ignore_eos`); the stage never passes one."""
    if not requests:
        return iter(())
    if cfg.pool.mode == "stream":
        from valley.generate.stream_pool import run_stream

        return run_stream(requests, cfg, board, sampling)
    if cfg.pool.mode == "local":
        return _run_local(requests, cfg, board, sampling)
    if cfg.pool.mode == "data":
        return _run_data(requests, cfg, board, sampling)
    return _run_serve(requests, cfg, board, sampling)


def _run_local(requests: list[Request], cfg: GenerateConfig, board: Any = None,
               sampling: Sampling | None = None) -> Iterator[list[Completion]]:
    worker = GenerateWorker(**{**worker_args(cfg, board, sampling), "fault_crash_once_file": None})
    try:
        for chunk in _chunks(requests, cfg.pool.batch_size):
            yield worker.run(chunk)
    finally:
        worker.backend.close()


def _run_data(requests: list[Request], cfg: GenerateConfig, board: Any = None,
              sampling: Sampling | None = None) -> Iterator[list[Completion]]:
    import ray

    pool = cfg.pool
    items = [{"question_id": r.question_id, "sample_idx": r.sample_idx, "prompt": r.prompt, "seed": r.seed,
              "max_tokens": r.max_tokens or 0} for r in requests]
    n_blocks = max(1, -(-len(items) // pool.batch_size))  # one block per batch: results stream back early
    ds = ray.data.from_items(items, override_num_blocks=n_blocks)
    with warnings.catch_warnings():
        # Ray Data has no named parameter for bounded actor restarts yet; its default is unbounded.
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = _map_generate(ds, cfg, board, sampling)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        yield columns_to_completions(batch)


def _map_generate(ds: Any, cfg: GenerateConfig, board: Any = None, sampling: Sampling | None = None) -> Any:
    import ray

    pool = cfg.pool
    return ds.map_batches(
        GenerateWorker,
        fn_constructor_kwargs=worker_args(cfg, board, sampling),
        batch_size=pool.batch_size,
        compute=ray.data.ActorPoolStrategy(size=pool.replicas),
        num_cpus=pool.num_cpus,
        num_gpus=cfg.replica_gpus(),
        max_restarts=pool.max_retries,
        max_task_retries=pool.max_retries,
    )


def _run_serve(requests: list[Request], cfg: GenerateConfig, board: Any = None,
               sampling: Sampling | None = None) -> Iterator[list[Completion]]:
    from ray import serve

    # a kept (shared) pool outlives this stage's board, and new constructor args would redeploy it
    handle = deploy(cfg, None if cfg.pool.keep_serving else board, sampling)
    try:
        yield from serve_requests(handle, requests, batch_size=cfg.pool.batch_size,
                                  in_flight=max(2, 2 * cfg.pool.replicas), max_retries=cfg.pool.max_retries)
    finally:
        if not cfg.pool.keep_serving:
            serve.delete(cfg.pool.app_name)


def deploy(cfg: GenerateConfig, board: Any = None, sampling: Sampling | None = None) -> Any:
    """Start (or update) the Serve application for this config and return its handle."""
    from ray import serve

    pool = cfg.pool
    serve.start(proxy_location="Disabled")  # handles only: no HTTP proxy actors to pay for
    deployment = serve.deployment(GenerateServer).options(
        name="generator",
        autoscaling_config={
            "min_replicas": pool.min_replicas,
            "initial_replicas": max(1, pool.min_replicas),
            "max_replicas": pool.replicas,
            "target_ongoing_requests": pool.target_ongoing_requests,
        },
        max_ongoing_requests=max(2, int(2 * pool.target_ongoing_requests)),
        ray_actor_options={"num_cpus": pool.num_cpus, "num_gpus": cfg.replica_gpus()},
    )
    app = deployment.bind(**worker_args(cfg, board, sampling))
    return serve.run(app, name=pool.app_name, route_prefix=None)


def serve_requests(handle: Any, requests: list[Request], *, batch_size: int, in_flight: int,
                   max_retries: int) -> Iterator[list[Completion]]:
    """Send batches through a Serve handle with bounded concurrency; re-send a batch whose replica died."""
    pending = list(_chunks(requests, batch_size))[::-1]
    running: list[tuple[Any, list[Request], int]] = []
    while pending or running:
        while pending and len(running) < in_flight:
            chunk = pending.pop()
            running.append((_submit(handle, chunk), chunk, 0))
        response, chunk, tries = running.pop(0)
        try:
            rows = response.result()
        except Exception as exc:  # a replica died or raised: Serve replaces it, we re-send
            if tries >= max_retries:
                raise RuntimeError(f"generation batch failed {tries + 1} times; last error: {exc}") from exc
            log.warning("generation batch failed (%s); retry %d/%d", type(exc).__name__, tries + 1, max_retries)
            running.append((_submit(handle, chunk), chunk, tries + 1))
            continue
        yield [Completion(**r) for r in rows]


def _submit(handle: Any, chunk: list[Request]) -> Any:
    return handle.generate.remote([r.__dict__ for r in chunk])
