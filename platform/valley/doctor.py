"""`valley doctor` (and `make gpu-check`): the first command to run on a new machine or GPU node.

CPU checks run everywhere: Python, the bubblewrap sandbox the grader needs, Ray (a task round trip),
DeepSpeed (import and which of its ops are prebuilt, from train/ops.py), and a write/read/delete round trip
on the storage root. `--gpu` adds the acceptance checks of a GPU node, each on the real code path: CUDA
and bf16; packed rows through FlashAttention-2 varlen and FlexAttention give the masked SDPA path's loss;
one ZeRO-3 bf16 step of a tiny model on every local GPU (the train loop's own engine and step, tokens/s
and MFU printed); vLLM generating for four LiveCodeBench prompts (tokens/s printed). The exit status is
non-zero when a check fails, and the failing checks are named last.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


def _run(name: str, fn: Callable[[], tuple[str, dict[str, Any]] | str]) -> Check:
    try:
        out = fn()
    except Exception as exc:  # noqa: BLE001 - a failed check reports whatever went wrong
        return Check(name, False, f"{type(exc).__name__}: {exc}")
    detail, data = out if isinstance(out, tuple) else (out, {})
    return Check(name, True, detail, data)


# ---------------------------------------------------------------- CPU checks


def check_python() -> str:
    return f"Python {sys.version.split()[0]} at {sys.executable}"


def check_sandbox() -> str:
    from valley.grade.sandbox import check_bwrap, find_bwrap

    return f"bwrap starts a sandbox ({check_bwrap(find_bwrap())})"


def check_ray() -> str:
    import ray

    started = not ray.is_initialized()
    if started:
        from valley import runtime

        runtime.init(num_cpus=1)
    try:
        value = ray.get(ray.remote(num_cpus=0)(lambda: 41 + 1).remote(), timeout=120)
        if value != 42:
            raise RuntimeError(f"a Ray task returned {value!r}")
        return f"Ray {ray.__version__}: a task ran on {ray.cluster_resources().get('CPU', 0):g} CPUs"
    finally:
        if started:
            ray.shutdown()


def check_deepspeed() -> tuple[str, dict[str, Any]]:
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if _cuda_available() else "cpu")
    import deepspeed

    try:
        from valley.train.ops import op_report
    except ImportError:  # an older tree without the op report
        return f"DeepSpeed {deepspeed.__version__} imports", {}
    report = op_report()
    return (f"DeepSpeed {deepspeed.__version__} ({report['accelerator']}): prebuilt ops "
            f"{', '.join(report['prebuilt']) or 'none'}; JIT dir {report['extensions_dir']}", report)


def check_storage(root: str) -> str:
    from valley.storage import Storage

    st = Storage(root)
    name = f".doctor-{uuid.uuid4().hex[:12]}"
    st.write_text("ok\n", name)
    try:
        if st.read_text(name) != "ok\n":
            raise RuntimeError(f"{st.uri(name)} read back different bytes")
    finally:
        st.remove(name)
    return f"{st.uri()} is writable (write, read, delete)"


def cpu_checks(storage_root: str) -> list[Check]:
    return [_run("python", check_python), _run("sandbox (bwrap)", check_sandbox), _run("ray", check_ray),
            _run("deepspeed", check_deepspeed), _run("storage", lambda: check_storage(storage_root))]


# ---------------------------------------------------------------- GPU checks


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def check_cuda() -> tuple[str, dict[str, Any]]:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(f"torch {torch.__version__} sees no CUDA device (CPU build or no driver)")
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if not torch.cuda.is_bf16_supported():
        raise RuntimeError(f"{names[0]} has no bf16 support")
    return (f"torch {torch.__version__}, CUDA {torch.version.cuda}, {len(names)} GPU(s): {', '.join(sorted(set(names)))}; "
            "bf16 supported", {"gpus": names})


def _tiny_model(root: Path) -> Path:
    from valley.demo import build_demo_tokenizer, build_tiny_model

    tok = build_demo_tokenizer(root / "tok")
    return build_tiny_model(root / "model", tok, hidden_size=256, num_layers=4)


def _packed_rows(n_rows: int, seq_len: int, vocab: int, seed: int = 0) -> Any:
    """Rows of several documents each, as the data stage packs them (random token ids)."""
    import random

    import pyarrow as pa

    from valley.train.batches import to_micro_batch

    rng = random.Random(seed)
    rows = []
    for _ in range(n_rows):
        ids, mask, pos = [], [], []
        while len(ids) < seq_len:
            n = min(seq_len - len(ids), rng.randint(seq_len // 8, seq_len // 2))
            ids += [rng.randrange(3, vocab) for _ in range(n)]
            mask += [0] * (n // 4) + [1] * (n - n // 4)
            pos += list(range(n))
        rows.append({"input_ids": ids, "loss_mask": mask, "position_ids": pos, "n_tokens": len(ids),
                     "trace_ids": ["x"]})
    return to_micro_batch(pa.Table.from_pylist(rows), max_seq_len=seq_len)


def check_attention(model_dir: Path) -> tuple[str, dict[str, Any]]:
    """Loss over packed rows per attention path, against the masked SDPA path (bf16 tolerance)."""
    import torch
    from transformers import AutoModelForCausalLM

    from valley.train.packing_attention import model_inputs, shifted_targets, token_loss_sum

    mb = _packed_rows(2, 2048, 1024)
    targets = shifted_targets(mb.input_ids, mb.loss_mask, mb.position_ids).cuda()
    losses: dict[str, float] = {}
    impls = ["sdpa", "flex_attention"]
    try:
        import flash_attn  # noqa: F401

        impls.append("flash_attention_2")
    except ImportError:
        pass
    for impl in impls:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16,
                                                     attn_implementation=impl).cuda()
        with torch.no_grad():
            kwargs = model_inputs(mb.input_ids.cuda(), mb.position_ids.cuda(), impl, torch.bfloat16)
            losses[impl] = float(token_loss_sum(model(**kwargs).logits, targets))
    ref = losses["sdpa"]
    bad = {k: v for k, v in losses.items() if abs(v - ref) > 2e-2 * abs(ref)}
    if bad:
        raise RuntimeError(f"packed-row loss differs from masked SDPA ({ref:.4f}): {bad}")
    missing = "" if "flash_attention_2" in losses else " (flash-attn not installed: FA2 not checked)"
    return ("same packed-row loss on " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()) + missing,
            {"losses": losses})


def _quiet_heartbeat() -> tuple:
    """The train loop's watchdog heartbeat, with no board to report to (a no-op), where the loop takes one."""
    try:
        from valley.watchdog import Heartbeat
    except ImportError:
        return ()
    return (Heartbeat(None, "doctor"),)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def zero3_rank(model_dir: str, seq_len: int, steps: int) -> dict[str, Any]:
    """One rank of the ZeRO-3 check: the train loop's engine and step on this rank's GPU."""
    import torch
    from transformers import AutoConfig

    from valley.train.config import TrainConfig
    from valley.train.flops import peak_flops
    from valley.train.loop import EngineSpec, _setup_deepspeed, _train_step

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    cfg = TrainConfig(data="-", model="-", num_workers=world, global_batch_size=world, micro_batch_size=1,
                      max_seq_len=seq_len, use_gpu=True, precision="bf16", attn_implementation="flex_attention")
    spec = EngineSpec(model_dir=model_dir, attn_implementation="flex_attention", total_steps=steps,
                      peak_flops=peak_flops(torch.cuda.get_device_name(device)))
    engine, _ = _setup_deepspeed(cfg, spec, world, device, *_quiet_heartbeat())
    engine.train()
    config = AutoConfig.from_pretrained(model_dir)
    metrics: dict[str, Any] = {}
    for step in range(steps):
        mb = _packed_rows(1, seq_len, config.vocab_size, seed=rank * 100 + step)
        metrics = _train_step(engine, [mb], cfg, spec, world, device, config)
    metrics["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 1024 ** 3
    return metrics


def check_zero3(model_dir: Path, seq_len: int = 4096, steps: int = 3) -> tuple[str, dict[str, Any]]:
    import torch

    world = torch.cuda.device_count()
    port = _free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                   WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), DS_ACCELERATOR="cuda")
        cmd = [sys.executable, "-m", "valley.doctor", "--zero3-rank", str(model_dir), str(seq_len), str(steps)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        if p.returncode:
            raise RuntimeError(f"a ZeRO-3 rank exited {p.returncode}: {err.strip()[-1500:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    m = results[0]
    mfu = f", MFU {m['mfu']:.1%}" if "mfu" in m else ""
    return (f"{steps} ZeRO-3 bf16 steps on {world} GPU(s), seq {seq_len}: loss {m['loss']:.3f}, "
            f"{m['tokens_per_s']:,.0f} tokens/s{mfu} (tiny model: MFU is not representative), peak "
            f"{max(r['peak_memory_gib'] for r in results):.2f} GiB", {"ranks": results})


def _lcb_problems(n: int) -> list[dict[str, Any]]:
    """Four LiveCodeBench problems: the shared LCB files when present, else the demo's LCB-shaped ones."""
    shared = Path(__file__).resolve().parents[3] / "shared" / "data"
    for path in sorted(shared.glob("**/test*.jsonl")) if shared.is_dir() else []:
        rows = []
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                if "question_content" in row:
                    rows.append(row)
                if len(rows) == n:
                    return rows
    from valley.demo import make_problems

    return make_problems(n)


def check_vllm(model_dir: Path) -> tuple[str, dict[str, Any]]:
    from valley.generate.backends.base import Request, Sampling
    from valley.generate.backends.vllm import VLLMBackend
    from valley.generate.prompts import render_prompt

    backend = VLLMBackend(str(model_dir), dtype="bfloat16", max_model_len=4096, gpu_memory_utilization=0.3,
                          enforce_eager=True)
    try:
        problems = _lcb_problems(4)
        requests = [Request(str(p.get("question_id", i)), 0, render_prompt(backend.tokenizer, p), seed=i)
                    for i, p in enumerate(problems)]
        t0 = time.perf_counter()
        out = backend.generate(requests, Sampling(temperature=0.8, top_p=0.95, max_tokens=512))
        seconds = time.perf_counter() - t0
    finally:
        backend.close()
    tokens = sum(c.n_tokens for c in out)
    if len(out) != len(requests) or tokens == 0:
        raise RuntimeError(f"vLLM returned {len(out)} completions with {tokens} tokens for {len(requests)} prompts")
    return (f"vLLM generated {tokens} tokens for {len(out)} LCB prompts: {tokens / seconds:,.0f} tokens/s "
            "(tiny model, 4 prompts)", {"tokens": tokens, "seconds": seconds})


def gpu_checks() -> list[Check]:
    checks = [_run("cuda + bf16", check_cuda)]
    if not checks[0].ok:
        return checks
    root = Path(tempfile.mkdtemp(prefix="valley-doctor-"))
    built = _run("tiny model", lambda: str(_tiny_model(root)))
    if not built.ok:
        return [*checks, built]
    model_dir = root / "model"
    checks += [_run("attention (FA2/Flex vs SDPA)", lambda: check_attention(model_dir)),
               _run("zero3 step", lambda: check_zero3(model_dir)),
               _run("vllm generate", lambda: check_vllm(model_dir))]
    return checks


# ---------------------------------------------------------------- entry


def report(checks: list[Check]) -> str:
    lines = [f"[{'ok' if c.ok else 'FAIL':>4}] {c.name}: {c.detail}" for c in checks]
    failed = [c.name for c in checks if not c.ok]
    lines.append(f"failed: {', '.join(failed)}" if failed else "all checks passed")
    return "\n".join(lines)


def main(storage_root: str = "runs", gpu: bool = False) -> int:
    """Run the checks, print one line each; 0 when all pass, 1 otherwise (failing checks named)."""
    checks = cpu_checks(storage_root)
    if gpu:
        checks += gpu_checks()
    print(report(checks), flush=True)
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--zero3-rank":  # one rank of check_zero3
        print(json.dumps(zero3_rank(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
        sys.exit(0)
    sys.exit(main(gpu="--gpu" in sys.argv))
