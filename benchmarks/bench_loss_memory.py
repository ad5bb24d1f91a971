"""Loss memory benchmark: the train stage's chunked LM-head loss vs full logits, one row, measured in one run.

The LM head and the loss of a long row are where SFT at 32K tokens runs out of memory: full logits are
L × vocab, and cross-entropy keeps an fp32 log-softmax of the same size for its backward. This script
runs forward + backward of only that part (decoder output → LM head → summed token loss) on a row of
`--seq-len` positions with the LM head of a real student shape (Qwen2.5's 151,936-entry vocabulary), in
a fresh process per variant, and prints for each its peak memory above the inputs, its time, and the
ratios chunked / full. Loss and gradients are checked equal first.

    python benchmarks/bench_loss_memory.py                       # CPU, seq 4096 (about 8 GB for "full")
    python benchmarks/bench_loss_memory.py --gpu --seq-len 32768 # CUDA peak via max_memory_allocated
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HEADS = {"qwen2.5-0.5b": (896, 151936), "qwen2.5-1.5b": (1536, 151936), "qwen2.5-7b": (3584, 152064),
         "llama-3.1-8b": (4096, 128256)}


def _inputs(hidden_size: int, vocab: int, seq_len: int, trained: float, device: str, dtype: str):
    import torch

    from valley.train.packing_attention import IGNORE

    torch.manual_seed(0)  # the head's init, identical in every variant's process
    g = torch.Generator().manual_seed(0)
    torch_dtype = getattr(torch, dtype)
    head = torch.nn.Linear(hidden_size, vocab, bias=False).to(device=device, dtype=torch_dtype)
    hidden = (torch.randn(1, seq_len, hidden_size, generator=g) * 2).to(device=device, dtype=torch_dtype).requires_grad_()
    targets = torch.randint(0, vocab, (1, seq_len), generator=g)
    targets[torch.rand(1, seq_len, generator=g) >= trained] = IGNORE  # prompts and padding
    return head, hidden, targets.to(device)


def _rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(args: argparse.Namespace) -> dict:
    """Run one variant in this (fresh) process and report its peak memory above the inputs."""
    import torch

    from valley.train.chunked_loss import chunked_loss_sum, chunks_for
    from valley.train.packing_attention import token_loss_sum

    hidden_size, vocab = HEADS[args.head]
    device = "cuda" if args.gpu else "cpu"
    head, hidden, targets = _inputs(hidden_size, vocab, args.seq_len, args.trained, device, args.dtype)
    n_chunks = chunks_for(targets.numel(), args.chunk_tokens)

    def run() -> float:
        if args.variant == "full":
            loss = token_loss_sum(head(hidden), targets)  # logits of every position, then the loss
        else:
            loss = chunked_loss_sum(hidden, targets, head, n_chunks)
        loss.backward()
        return float(loss)

    if args.gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_peak_bytes()
    t0 = time.perf_counter()
    loss = run()
    if args.gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if args.gpu else _rss_peak_bytes()) - base
    grad_sum = float(hidden.grad.double().abs().sum()) + float(head.weight.grad.double().abs().sum())
    return {"variant": args.variant, "peak_bytes": max(peak, 0), "seconds": seconds, "loss": loss,
            "grad_abs_sum": grad_sum}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--head", default="qwen2.5-0.5b", choices=sorted(HEADS))
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--chunk-tokens", type=int, default=1024, help="the train stage's loss_chunk_tokens")
    ap.add_argument("--trained", type=float, default=0.85, help="share of positions with a target")
    ap.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on GPU")
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--variant", choices=["full", "chunked"], help=argparse.SUPPRESS)
    ap.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.gpu else "float32")
    if args.variant:
        print(json.dumps(child(args)))
        return 0

    out = {}
    for variant in ("full", "chunked"):
        cmd = [sys.executable, __file__, "--variant", variant, "--head", args.head, "--seq-len", str(args.seq_len),
               "--chunk-tokens", str(args.chunk_tokens), "--trained", str(args.trained), "--dtype", args.dtype]
        if args.gpu:
            cmd.append("--gpu")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    full, chunked = out["full"], out["chunked"]
    tol = 1e-4 if args.dtype == "float32" else 2e-2
    assert abs(full["loss"] - chunked["loss"]) <= tol * abs(full["loss"]), (full["loss"], chunked["loss"])
    assert abs(full["grad_abs_sum"] - chunked["grad_abs_sum"]) <= tol * full["grad_abs_sum"]
    gib = 1024 ** 3
    mem_ratio = chunked["peak_bytes"] / full["peak_bytes"]
    time_ratio = chunked["seconds"] / full["seconds"]
    device = "gpu" if args.gpu else "cpu"
    print(f"LM head + loss, forward+backward, {args.head} head, one row of {args.seq_len:,} positions "
          f"({args.trained:.0%} trained), {args.dtype} on {device}:")
    print(f"  full logits : peak +{full['peak_bytes'] / gib:.2f} GiB, {full['seconds']:.2f} s")
    print(f"  chunked     : peak +{chunked['peak_bytes'] / gib:.2f} GiB, {chunked['seconds']:.2f} s "
          f"(chunks of {args.chunk_tokens} positions)")
    print(f"  ratio chunked / full: memory {mem_ratio:.3f}, time {time_ratio:.2f}  (same loss and gradients)")
    result = {"date": dt.date.today().isoformat(), "device": device, "head": args.head, "seq_len": args.seq_len,
              "chunk_tokens": args.chunk_tokens, "trained": args.trained, "dtype": args.dtype,
              "full": full, "chunked": chunked, "memory_ratio": round(mem_ratio, 4), "time_ratio": round(time_ratio, 3)}
    Path(args.results).mkdir(parents=True, exist_ok=True)
    path = Path(args.results) / f"loss-memory-{result['date']}-{device}-{args.head}-{args.seq_len}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
