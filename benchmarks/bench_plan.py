"""Capacity-plan benchmark: `valley plan`'s per-rank memory prediction vs a real ZeRO-3 step's peak, on CPU.

For each sequence length, two fresh processes (ranks 0 and 1 over gloo) build the train stage's own
engine (`train/loop.py`: the model loaded inside `deepspeed.zero.Init`, activation checkpointing, the
chunked loss, DeepSpeed ZeRO-3 on its CPU accelerator) for a Qwen2.5-0.5B-shaped student with random
weights, and run two optimizer steps on packed rows of that length. Each rank measures its resident
memory: the baseline after the imports and the process group (libraries, not training), then the peak
(VmHWM, reset after the engine is built so loading the checkpoint does not count) of each phase of the
steps: forward+backward, then the optimizer step (the peak is reset between them). A sampling thread
notes, at the highest RSS it sees in each phase, what holds memory then: ZeRO-3's partitions (parameters,
fp32 master copy when it is not the same tensor, gradients, Adam's moments, the reduce bucket), the full
parameters gathered at that moment, and glibc's heap (bytes in use, bytes freed but kept). The plan's
prediction for the same shape and settings (capacity/memory.py, fp32 as on CPU: persistent states and
buffers plus each transient phase) is printed beside it with the ratios measured / predicted; the plan is
trusted where they lie within 0.75-1.25. The JSON result is rewritten after each sequence length, so a run
stopped early keeps the shapes it finished.

    python benchmarks/bench_plan.py            # 1K, 2K, 4K: 11-12 GB RAM per rank (~23 GB); a quiet machine
    python benchmarks/bench_plan.py --seq-lens 512 --shape tiny   # quick check of the machinery only
    python benchmarks/bench_plan.py --layers 3 --vocab 16000 --seq-lens 1024,2048   # 0.5B widths, ~4 GB
    python benchmarks/bench_plan.py --model models/SmolLM2-135M-Instruct --seq-lens 1024,4096 --tolerance 0.15
        # a real student's own weights and shape (`valley model smollm2 --cache models`): Llama, tied, 49K vocab
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

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


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def malloc_bytes() -> dict[str, int]:
    """glibc's heap (all arenas): bytes in use, bytes freed but still resident-capable (slack the kernel
    never got back), and bytes in mmapped chunks (large tensors, returned on free). Empty off glibc."""
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return {}
    fn.restype = _MallInfo2
    info = fn()
    return {"heap_in_use": info.uordblks, "heap_free": info.fordblks, "mmapped": info.hblkhd}


def _nbytes(t: Any) -> int:
    return t.numel() * t.element_size() if t is not None else 0


def gathered_bytes(engine: Any) -> int:
    """Bytes of the non-persistent parameters ZeRO-3 holds whole right now."""
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    return sum(p.ds_numel * p.element_size() for p in list(engine.module.parameters())
               if getattr(p, "ds_status", None) == ZeroParamStatus.AVAILABLE and not p.ds_persist)


def zero_holders(engine: Any) -> dict[str, int]:
    """Bytes of what ZeRO-3 holds right now, by role: its partitions, and the full parameters gathered."""
    import torch
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    opt = engine.optimizer
    out = {"gathered_params": 0, "persistent_params": 0}
    for p in list(engine.module.parameters()):
        if getattr(p, "ds_status", None) == ZeroParamStatus.AVAILABLE:
            out["persistent_params" if p.ds_persist else "gathered_params"] += p.ds_numel * p.element_size()
    lp = getattr(opt, "lp_param_buffer", None)
    lp_ptr = lp.untyped_storage().data_ptr() if lp is not None else None
    masters = list(getattr(opt, "fp32_partitioned_groups_flat", []))
    out["param_partitions"] = _nbytes(lp)
    out["master_copy"] = sum(_nbytes(t) for t in masters if t.untyped_storage().data_ptr() != lp_ptr)
    out["master_grad"] = sum(_nbytes(t.grad) for t in masters)
    out["grad_partitions"] = _nbytes(getattr(opt, "grad_partitions_flat_buffer", None))
    out["adam_moments"] = sum(_nbytes(v) for st in list(opt.optimizer.state.values()) for v in list(st.values())
                              if torch.is_tensor(v))
    out["reduce_bucket"] = sum(_nbytes(b.buffer) for b in getattr(opt, "ipg_buckets", {}).values())
    return out


class PeakSampler:
    """Reads RSS every few milliseconds in a thread and, at each new high of the current phase, notes what
    holds memory (`zero_holders`, `malloc_bytes`) — a breakdown taken within milliseconds of the peak."""

    def __init__(self, engine: Any, interval_s: float = 0.003) -> None:
        self.engine, self.interval_s = engine, interval_s
        self.high, self.at_high, self.gathered_high = 0, {}, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> PeakSampler:
        self._thread.start()
        return self

    def take(self) -> tuple[int, dict[str, int]]:
        """The phase's highest sampled RSS and its breakdown (with the most gathered-parameter bytes seen
        at any sample of the phase); starts the next phase afresh."""
        high, at = self.high, {**self.at_high, "gathered_params_high": self.gathered_high}
        self.high, self.at_high, self.gathered_high = 0, {}, 0
        return high, at

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            rss = _status_kib("VmRSS") * 1024
            self.gathered_high = max(self.gathered_high, gathered_bytes(self.engine))
            if rss > self.high:
                try:
                    snap = {"rss": rss, **zero_holders(self.engine), **malloc_bytes()}
                except RuntimeError:  # a dict changed size while read (the optimizer creating its state)
                    continue
                self.high, self.at_high = rss, snap


def train_config(seq_len: int, chunk: int, workers: int = 2, zero: dict[str, Any] | None = None):
    from valley.train.config import TrainConfig

    # ZeRO-3's reduce and prefetch buckets are set to 5e7 elements (DeepSpeed's default is 5e8) so two ranks
    # fit a shared 24 GB machine; the plan reads them from the same config, as it does on a cluster
    zero_opts = {"reduce_bucket_size": BUCKET, "stage3_prefetch_bucket_size": BUCKET, **(zero or {})}
    return TrainConfig(data="-", model="-", num_workers=workers, global_batch_size=workers, micro_batch_size=1,
                       max_seq_len=seq_len, loss_chunk_tokens=chunk, use_gpu=False, attn_implementation="sdpa",
                       learning_rate=1e-5, epochs=1, deepspeed={"zero_optimization": zero_opts})


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
    cfg = train_config(args.seq_len, args.chunk_tokens, zero=json.loads(args.zero))
    spec = EngineSpec(model_dir=args.model_dir, attn_implementation="sdpa", total_steps=10)
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    baseline = _status_kib("VmRSS") * 1024
    baseline_malloc = malloc_bytes()
    engine, _ = _setup_deepspeed(cfg, spec, 2, torch.device("cpu"), *_quiet_heartbeat())
    after_init = _status_kib("VmRSS") * 1024
    after_init_malloc = malloc_bytes()
    model_config = AutoConfig.from_pretrained(args.model_dir)
    rank = int(os.environ["RANK"])
    rows = synthetic_rows(4, args.seq_len, min(model_config.vocab_size, 32000), seed=rank)
    engine.train()
    phases: dict[str, dict[str, Any]] = {"forward_backward": {"peak": 0}, "optimizer_step": {"peak": 0}}
    step_starts: list[dict[str, int]] = []  # what the step starts from: RSS and heap left by the backward
    sampler = PeakSampler(engine).start()
    reset = _reset_peak()
    real_step = engine.step

    def end_phase(name: str) -> None:
        peak = _status_kib("VmHWM") * 1024
        sampled, holders = sampler.take()
        if peak > phases[name]["peak"]:
            phases[name] = {"peak": peak, "sampled_high": sampled, "holders": holders}
        _reset_peak()

    def step_between_peaks(*a, **kw):  # the peak so far is forward+backward's; the step's is measured apart
        end_phase("forward_backward")
        step_starts.append({"rss": _status_kib("VmRSS") * 1024, **malloc_bytes()})
        out = real_step(*a, **kw)
        end_phase("optimizer_step")
        return out

    engine.step = step_between_peaks
    for i in range(2):  # the second step is the steady state: Adam's moments exist from the first
        mb = to_micro_batch(pa.Table.from_pylist(rows[i:i + 1]), max_seq_len=args.seq_len)
        _train_step(engine, [mb], cfg, spec, 2, torch.device("cpu"), model_config)
    sampler.stop()
    peak = max(p["peak"] for p in phases.values())
    return {"rank": rank, "baseline_bytes": baseline, "baseline_malloc": baseline_malloc,
            "after_init_bytes": after_init, "after_init_malloc": after_init_malloc, "peak_bytes": peak, "peak_reset": reset,
            "step_peak_above_baseline": peak - baseline,
            "phase_peaks_above_baseline": {k: v["peak"] - baseline for k, v in phases.items()}, "phases": phases,
            "step_starts": step_starts}


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


def measure(model_dir: Path, seq_len: int, chunk: int, zero: str) -> list[dict]:
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                   LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2", OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
        cmd = [sys.executable, __file__, "--child", "--model-dir", str(model_dir), "--seq-lens", str(seq_len),
               "--chunk-tokens", str(chunk), "--zero", zero]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = []
    for p in procs:
        stdout, stderr = p.communicate()
        if p.returncode:
            raise RuntimeError(f"rank failed ({p.returncode}):\n{stderr[-4000:]}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def predicted(model_dir: Path, seq_len: int, chunk: int, zero: dict[str, Any]) -> dict:
    from transformers import AutoConfig

    from valley.capacity.memory import ModelShape, rank_memory

    shape = ModelShape.from_config(AutoConfig.from_pretrained(str(model_dir)).to_dict())
    return rank_memory(shape, train_config(seq_len, chunk, zero=zero), world_size=2, device="cpu").as_dict()


def build_shape(root: Path, shape: str, layers: int | None, vocab: int | None) -> tuple[Path, str]:
    """The benchmark's student: a shape of bench_train.SHAPES, with fewer layers or another vocabulary when
    asked (the same widths at a fraction of the memory); returns its directory and its name."""
    from bench_train import SHAPES, build_model
    from valley.demo import build_demo_tokenizer

    name = shape
    if layers or vocab:
        name = f"{shape}-{layers or 'all'}l" + (f"-v{vocab}" if vocab else "")
        SHAPES[name] = {**SHAPES[shape], **({"num_hidden_layers": layers} if layers else {}),
                        **({"vocab_size": vocab} if vocab else {})}
    return build_model(root, name, build_demo_tokenizer(root / "tok")), name


def _mib(n: int) -> str:
    return f"{n / MIB:,.0f}"


def breakdown_line(rank: dict, phase: str) -> str:
    """What held memory at the sampled high of one phase (rank 0), in MiB above the baseline."""
    p = rank["phases"][phase]
    h, base = p.get("holders", {}), rank["baseline_malloc"]
    if not h:
        return f"  {phase}: no sample"
    parts = [f"rss {_mib(h['rss'] - rank['baseline_bytes'])} (VmHWM {_mib(p['peak'] - rank['baseline_bytes'])})"]
    parts += [f"{k} {_mib(h[k])}" for k in ("param_partitions", "master_copy", "grad_partitions", "adam_moments",
                                            "master_grad", "reduce_bucket", "gathered_params", "persistent_params",
                                            "gathered_params_high")]
    if base:
        parts += [f"heap_in_use +{_mib(h['heap_in_use'] - base['heap_in_use'])}",
                  f"heap_free +{_mib(h['heap_free'] - base['heap_free'])}",
                  f"mmapped +{_mib(h['mmapped'] - base['mmapped'])}"]
    return f"  {phase}: " + ", ".join(parts)


def result_row(seq_len: int, ranks: list[dict], pred: dict) -> dict:
    """One sequence length: measured (the higher rank) vs predicted, in total and per phase."""
    measured = max(r["step_peak_above_baseline"] for r in ranks)
    phase = {k: max(r["phase_peaks_above_baseline"][k] for r in ranks) for k in ("forward_backward", "optimizer_step")}
    phase_pred = {"forward_backward": pred["persistent"] + pred["forward_backward"],
                  "optimizer_step": pred["persistent"] + pred["optimizer_phase"]}
    return {"seq_len": seq_len, "measured_bytes": measured, "predicted_bytes": pred["total"],
            "ratio_measured_over_predicted": round(measured / pred["total"], 3), "phase_measured_bytes": phase,
            "phase_predicted_bytes": phase_pred,
            "phase_ratios": {k: round(phase[k] / phase_pred[k], 3) for k in phase}, "predicted": pred,
            "ranks": ranks}


def summary_line(row: dict) -> str:
    m, p, r = row["phase_measured_bytes"], row["phase_predicted_bytes"], row["phase_ratios"]
    return (f"seq {row['seq_len']:>6}: measured peak {_mib(row['measured_bytes'])} MiB/rank, predicted "
            f"{_mib(row['predicted_bytes'])} MiB/rank, ratio {row['ratio_measured_over_predicted']:.2f}; "
            f"forward+backward {_mib(m['forward_backward'])} vs {_mib(p['forward_backward'])} MiB "
            f"({r['forward_backward']:.2f}), optimizer step {_mib(m['optimizer_step'])} vs "
            f"{_mib(p['optimizer_step'])} MiB ({r['optimizer_step']:.2f})")


def within_limits(rows: list[dict], tolerance: float = 0.25) -> bool:
    return all(1 - tolerance <= x <= 1 + tolerance
               for r in rows for x in (r["ratio_measured_over_predicted"], *r["phase_ratios"].values()))


def write_result(args: argparse.Namespace, shape: str, rows: list[dict], seq_lens: list[int]) -> Path:
    """(Re)write the dated JSON with the shapes finished so far, so a stopped run keeps them."""
    date = dt.date.today().isoformat()
    result = {"date": date, "device": "cpu", "shape": shape, "workers": 2, "precision": "fp32", "zero_stage": 3,
              "loss_chunk_tokens": args.chunk_tokens, "zero_overrides": json.loads(args.zero),
              "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "seq_lens_asked": seq_lens, "complete": len(rows) == len(seq_lens), "rows": rows,
              "tolerance": args.tolerance, "within_tolerance": within_limits(rows, args.tolerance)}
    Path(args.results).mkdir(parents=True, exist_ok=True)
    path = Path(args.results) / f"plan-memory-{date}-cpu-{shape}-{'-'.join(map(str, seq_lens))}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="qwen2.5-0.5b", help="a shape of bench_train.SHAPES")
    ap.add_argument("--layers", type=int, default=None, help="override the shape's number of layers")
    ap.add_argument("--vocab", type=int, default=None, help="override the shape's vocabulary size")
    ap.add_argument("--seq-lens", default="1024,2048,4096")
    ap.add_argument("--chunk-tokens", type=int, default=512, help="the train stage's loss_chunk_tokens")
    ap.add_argument("--zero", default="{}", help="JSON of zero_optimization overrides (engine and plan alike)")
    ap.add_argument("--model", default=None, help="a Hugging Face model directory to measure instead of --shape "
                    "(its own weights and config)")
    ap.add_argument("--tolerance", type=float, default=0.25, help="how far measured/predicted may lie from 1")
    ap.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    if args.child:
        args.seq_len = int(args.seq_lens)
        print(json.dumps(child(args)))
        return 0

    if args.model:
        model_dir, shape = Path(args.model).resolve(), Path(args.model).resolve().name.lower()
    else:
        model_dir, shape = build_shape(Path(tempfile.mkdtemp(prefix="bench-plan-")), args.shape, args.layers,
                                       args.vocab)
    seq_lens = [int(s) for s in args.seq_lens.split(",")]
    rows: list[dict] = []
    for seq_len in seq_lens:
        ranks = measure(model_dir, seq_len, args.chunk_tokens, args.zero)
        rows.append(result_row(seq_len, ranks, predicted(model_dir, seq_len, args.chunk_tokens, json.loads(args.zero))))
        print(summary_line(rows[-1]), flush=True)
        for phase in ("forward_backward", "optimizer_step"):
            print(breakdown_line(ranks[0], phase), flush=True)
        print(f"  wrote {write_result(args, shape, rows, seq_lens)}", flush=True)
    print(f"plan within ±{args.tolerance:.0%} of the measured peak at every shape: "
          f"{within_limits(rows, args.tolerance)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
