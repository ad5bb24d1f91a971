"""Capacity-plan benchmark: `valley plan`'s per-rank memory prediction vs a real ZeRO-3 step's peak, on CPU.

For each sequence length, two fresh processes (ranks 0 and 1 over gloo) build the train stage's own
engine (`train/loop.py`: the model loaded inside `deepspeed.zero.Init`, activation checkpointing, the
chunked loss, DeepSpeed ZeRO-3 on its CPU accelerator) for a Qwen2.5-0.5B-shaped student with random
weights, and run two optimizer steps on packed rows of that length. Each rank measures its resident
memory: the baseline after the imports and the process group (libraries, not training), then the peak
(VmHWM, reset after the engine is built so loading the checkpoint does not count) of each phase of the
steps: forward+backward, then the optimizer step (the peak is reset between them). The plan's prediction
for the same shape and settings (capacity/memory.py, fp32 as on CPU: persistent states and buffers plus
each transient phase) is printed beside it with the ratios measured / predicted; the plan is trusted where
they lie within 0.75-1.25.

    python benchmarks/bench_plan.py            # 1K, 2K, 4K: ~9.5 GB RAM per rank (19 GB); a quiet machine
    python benchmarks/bench_plan.py --seq-lens 512 --shape tiny   # quick check of the machinery only
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
MIB = 1024 ** 2
BUCKET = 50_000_000


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    """Linux ≥ 4.0: writing 5 to clear_refs resets VmHWM to the current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def train_config(seq_len: int, chunk: int, workers: int = 2):
    from valley.train.config import TrainConfig

    # ZeRO-3's reduce and prefetch buckets are set to 5e7 elements (DeepSpeed's default is 5e8) so two ranks
    # fit a shared 24 GB machine; the plan reads them from the same config, as it does on a cluster
    buckets = {"zero_optimization": {"reduce_bucket_size": BUCKET, "stage3_prefetch_bucket_size": BUCKET}}
    return TrainConfig(data="-", model="-", num_workers=workers, global_batch_size=workers, micro_batch_size=1,
                       max_seq_len=seq_len, loss_chunk_tokens=chunk, use_gpu=False, attn_implementation="sdpa",
                       learning_rate=1e-5, epochs=1, deepspeed=buckets)


def child(args: argparse.Namespace) -> dict:
    """One rank: build the stage's engine, run two steps, report baseline and peak resident memory."""
    os.environ["DS_ACCELERATOR"] = "cpu"
    import pyarrow as pa
    import torch
    from transformers import AutoConfig

    from bench_train import synthetic_rows
    from valley.train.batches import to_micro_batch
    from valley.train.loop import EngineSpec, _setup_deepspeed, _train_step

    torch.set_num_threads(1)
    cfg = train_config(args.seq_len, args.chunk_tokens)
    spec = EngineSpec(model_dir=args.model_dir, attn_implementation="sdpa", total_steps=10)
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    baseline = _status_kib("VmRSS") * 1024
    engine, _ = _setup_deepspeed(cfg, spec, 2, torch.device("cpu"), *_quiet_heartbeat())
    after_init = _status_kib("VmRSS") * 1024
    reset = _reset_peak()
    model_config = AutoConfig.from_pretrained(args.model_dir)
    rank = int(os.environ["RANK"])
    rows = synthetic_rows(4, args.seq_len, min(model_config.vocab_size, 32000), seed=rank)
    engine.train()
    phases = {"forward_backward": 0, "optimizer_step": 0}
    real_step = engine.step

    def step_between_peaks(*a, **kw):  # the peak so far is forward+backward's; the step's is measured apart
        phases["forward_backward"] = max(phases["forward_backward"], _status_kib("VmHWM") * 1024)
        _reset_peak()
        out = real_step(*a, **kw)
        phases["optimizer_step"] = max(phases["optimizer_step"], _status_kib("VmHWM") * 1024)
        _reset_peak()
        return out

    engine.step = step_between_peaks
    for i in range(2):  # the second step is the steady state: Adam's moments exist from the first
        mb = to_micro_batch(pa.Table.from_pylist(rows[i:i + 1]), max_seq_len=args.seq_len)
        _train_step(engine, [mb], cfg, spec, 2, torch.device("cpu"), model_config)
    peak = max(phases.values())
    return {"rank": rank, "baseline_bytes": baseline, "after_init_bytes": after_init, "peak_bytes": peak,
            "peak_reset": reset, "step_peak_above_baseline": peak - baseline,
            "phase_peaks_above_baseline": {k: v - baseline for k, v in phases.items()}}


def _quiet_heartbeat() -> tuple:
    """The train loop's watchdog heartbeat, with no board to report to (a no-op), where the loop takes one."""
    try:
        from valley.watchdog import Heartbeat
    except ImportError:
        return ()
    return (Heartbeat(None, "bench-plan"),)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(model_dir: Path, seq_len: int, chunk: int) -> list[dict]:
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                   LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2", OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
        cmd = [sys.executable, __file__, "--child", "--model-dir", str(model_dir), "--seq-lens", str(seq_len),
               "--chunk-tokens", str(chunk)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = []
    for p in procs:
        stdout, stderr = p.communicate()
        if p.returncode:
            raise RuntimeError(f"rank failed ({p.returncode}):\n{stderr[-4000:]}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def predicted(model_dir: Path, seq_len: int, chunk: int) -> dict:
    from transformers import AutoConfig

    from valley.capacity.memory import ModelShape, rank_memory

    shape = ModelShape.from_config(AutoConfig.from_pretrained(str(model_dir)).to_dict())
    return rank_memory(shape, train_config(seq_len, chunk), world_size=2, device="cpu").as_dict()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="qwen2.5-0.5b", help="a shape of bench_train.SHAPES")
    ap.add_argument("--seq-lens", default="1024,2048,4096")
    ap.add_argument("--chunk-tokens", type=int, default=512, help="the train stage's loss_chunk_tokens")
    ap.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    if args.child:
        args.seq_len = int(args.seq_lens)
        print(json.dumps(child(args)))
        return 0

    from bench_train import build_model
    from valley.demo import build_demo_tokenizer

    tmp = Path(tempfile.mkdtemp(prefix="bench-plan-"))
    model_dir = build_model(tmp, args.shape, build_demo_tokenizer(tmp / "tok"))
    rows = []
    for seq_len in [int(s) for s in args.seq_lens.split(",")]:
        ranks = measure(model_dir, seq_len, args.chunk_tokens)
        pred = predicted(model_dir, seq_len, args.chunk_tokens)
        measured = max(r["step_peak_above_baseline"] for r in ranks)
        ratio = measured / pred["total"]
        phase = {k: max(r["phase_peaks_above_baseline"][k] for r in ranks) for k in ("forward_backward", "optimizer_step")}
        phase_pred = {"forward_backward": pred["persistent"] + pred["forward_backward"],
                      "optimizer_step": pred["persistent"] + pred["optimizer_step"]}
        phase_ratio = {k: round(phase[k] / phase_pred[k], 3) for k in phase}
        rows.append({"seq_len": seq_len, "measured_bytes": measured, "predicted_bytes": pred["total"],
                     "ratio_measured_over_predicted": round(ratio, 3), "phase_measured_bytes": phase,
                     "phase_predicted_bytes": phase_pred, "phase_ratios": phase_ratio, "predicted": pred,
                     "ranks": ranks})
        print(f"seq {seq_len:>6}: measured peak {measured / MIB:,.0f} MiB/rank, predicted {pred['total'] / MIB:,.0f} "
              f"MiB/rank, ratio {ratio:.2f}; forward+backward {phase['forward_backward'] / MIB:,.0f} vs "
              f"{phase_pred['forward_backward'] / MIB:,.0f} MiB ({phase_ratio['forward_backward']:.2f}), optimizer step "
              f"{phase['optimizer_step'] / MIB:,.0f} vs {phase_pred['optimizer_step'] / MIB:,.0f} MiB "
              f"({phase_ratio['optimizer_step']:.2f})", flush=True)
    ok = all(0.75 <= x <= 1.25 for r in rows for x in (r["ratio_measured_over_predicted"], *r["phase_ratios"].values()))
    print(f"plan within ±25% of the measured peak at every shape: {ok}")
    result = {"date": dt.date.today().isoformat(), "device": "cpu", "shape": args.shape, "workers": 2,
              "precision": "fp32", "zero_stage": 3, "loss_chunk_tokens": args.chunk_tokens, "rows": rows,
              "within_25pct": ok}
    Path(args.results).mkdir(parents=True, exist_ok=True)
    path = Path(args.results) / f"plan-memory-{result['date']}-cpu-{args.shape}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
