"""Train stage benchmark: tokens/s of the real stage (Ray Train + DeepSpeed ZeRO-3), MFU on GPU.

Printed, measured in one run on the same synthetic packed rows (random token ids; documents of random
length packed into fixed rows with per-document position ids, as the data stage writes them):
1. steady-state tokens/s of `run_train` (N Ray workers, ZeRO-3; gloo on CPU, NCCL on GPU), from the
   wall-clock time between logged steps (data waits and Ray reports included, checkpoints excluded);
2. the same for a plain single-process torch loop (AdamW, same model, same masks, same micro-batches and
   gradient accumulation) and the ratio stage / plain — the price (or gain) of the distributed machinery;
3. on GPU: MFU per step (model FLOPs from the config, causal attention per document included) and its
   median, with the device's bf16 dense peak.

    python benchmarks/bench_train.py                                  # CPU: tiny Qwen2, 2 workers
    python benchmarks/bench_train.py --gpu --shape qwen2.5-1.5b --seq-len 16384 --workers 1 --rows 64
    python benchmarks/bench_train.py --gpu --shape qwen2.5-0.5b --seq-len 32768 --workers 8 --rows 512
    python benchmarks/bench_train.py --model models/SmolLM2-135M-Instruct --rows 24 --global-batch 4 --breakdown

`--no-leaf-blocks` runs ZeRO-3 with hooks on every module (`zero3_leaf_blocks: false`), to price that knob.
`--breakdown` (CPU) also runs the stage's own step in this process at world size 1 (DeepSpeed ZeRO-3, no
Ray, rows from memory) and reports each steady step's seconds outside the step (reading its micro-batches,
reports), which separates what Ray Train and the data feed cost from what DeepSpeed's engine costs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Published shapes of the students' smaller siblings, with random weights (no download).
SHAPES = {
    "tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, tie_word_embeddings=True, vocab_size=151936),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, tie_word_embeddings=True, vocab_size=151936),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, tie_word_embeddings=False, vocab_size=152064),
}


def build_model(root: Path, shape: str, tok_dir: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    kw = dict(SHAPES[shape])
    kw.setdefault("vocab_size", len(tok))
    config = Qwen2Config(max_position_embeddings=131072, rope_theta=1e6, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, bos_token_id=None, **kw)
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16 if shape != "tiny" else torch.float32)
    out = root / f"model-{shape}"
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    GenerationConfig(eos_token_id=tok.eos_token_id).save_pretrained(str(out))
    return out


def synthetic_rows(n_rows: int, seq_len: int, vocab: int, seed: int) -> list[dict]:
    """Packed rows of documents 10%–60% of a row long (code traces are long), ≥95% filled, then padded."""
    rng = random.Random(seed)
    rows = []
    for r in range(n_rows):
        ids, mask, pos, tids = [], [], [], []
        while seq_len - len(ids) >= seq_len // 20:  # fill until the room left is under 5% of a row
            room = seq_len - len(ids)
            n = min(room, rng.randint(seq_len // 10, int(seq_len * 0.6)))
            prompt = rng.randint(n // 10, n // 4)
            ids += [rng.randrange(3, vocab) for _ in range(n)]
            mask += [0] * prompt + [1] * (n - prompt)
            pos += list(range(n))
            tids.append(f"r{r}-d{len(tids)}")
        real = len(ids)
        pad = seq_len - real
        rows.append({"input_ids": ids + [0] * pad, "loss_mask": mask + [0] * pad, "position_ids": pos + list(range(pad)),
                     "n_docs": len(tids), "n_tokens": real, "n_loss_tokens": sum(mask), "trace_ids": tids})
    return rows


def write_data(storage, rows: list[dict], tok_dir: Path, seq_len: int, name: str = "data/bench") -> str:
    import pyarrow as pa

    from valley import schemas

    half = len(rows) // 2
    for i, part in enumerate((rows[:half], rows[half:])):
        storage.write_parquet(pa.Table.from_pylist(part, schema=schemas.TOKENIZED), name, "tokenized", "all",
                              f"part-{i:05d}.parquet", schema=schemas.TOKENIZED)
    for p in sorted(tok_dir.iterdir()):
        storage.write_bytes(p.read_bytes(), name, "tokenizer", p.name)
    storage.write_json({"seq_len": seq_len, "subsets": {"all": {"rows": len(rows)}}}, name, "manifest.json")
    storage.mark_success(name, "bench")
    return name


def steady(history: list[dict], skip: int) -> tuple[float, list[float]]:
    """tokens/s between the end of step `skip` and the last step (wall clock), and per-step MFU values."""
    h = history[skip:]
    tokens = sum(x["tokens"] for x in h[1:])
    wall = h[-1]["time"] - h[0]["time"]
    return tokens / wall, [x["mfu"] for x in h if "mfu" in x]


def plain_loop(model_dir: Path, rows: list[dict], micro: int, accum: int, steps: int, gpu: bool, skip: int) -> float:
    """The naive way: one process, torch AdamW, the same masks and batches; tokens/s after `skip` steps."""
    import pyarrow as pa
    import torch
    from transformers import AutoModelForCausalLM

    from valley.train.batches import to_micro_batch
    from valley.train.loop import enable_activation_checkpointing
    from valley.train.packing_attention import IGNORE, model_inputs, shifted_targets, token_loss_sum

    device = torch.device("cuda" if gpu else "cpu")
    dtype = torch.bfloat16 if gpu else torch.float32
    impl = "sdpa"
    if gpu:
        try:
            import flash_attn  # noqa: F401

            impl = "flash_attention_2"
        except ImportError:
            pass
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, attn_implementation=impl).to(device)
    enable_activation_checkpointing(model)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    table = pa.Table.from_pylist(rows)
    seq = max(len(r["input_ids"]) for r in rows)
    t_start, tokens = None, 0
    i = 0
    for step in range(steps):
        group = []
        for _ in range(accum):
            group.append(to_micro_batch(table.slice(i % len(rows), micro), max_seq_len=seq))
            i += micro
        targets = [shifted_targets(mb.input_ids, mb.loss_mask, mb.position_ids) for mb in group]
        n = sum(int((t != IGNORE).sum()) for t in targets)
        for mb, t in zip(group, targets, strict=True):
            out = model(**model_inputs(mb.input_ids.to(device), mb.position_ids.to(device), impl, dtype)).logits
            (token_loss_sum(out, t.to(device)) / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if gpu:
            torch.cuda.synchronize()
        if step == skip:
            t_start = time.perf_counter()
        elif step > skip:
            tokens += sum(mb.n_tokens for mb in group)
    return tokens / (time.perf_counter() - t_start)


def step_in_process(model_dir: Path, rows: list[dict], cfg, micro: int, accum: int, steps: int, skip: int) -> float:
    """The stage's own step (`loop._train_step`: DeepSpeed at `cfg.zero_stage`, the chunked loss, its metrics) in
    this process at world size 1, fed from memory: no Ray, no Parquet, no collectives between ranks. Set
    against the plain loop it prices DeepSpeed's engine and our step; against the stage, everything else."""
    import pyarrow as pa
    import torch
    from transformers import AutoConfig

    from valley.train import loop
    from valley.train.batches import to_micro_batch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    spec = loop.EngineSpec(model_dir=str(model_dir), attn_implementation="sdpa", total_steps=steps)
    solo = cfg.model_copy(update={"num_workers": 1})
    engine, _ = loop._setup_deepspeed(solo, spec, 1, torch.device("cpu"))
    engine.train()
    model_config = AutoConfig.from_pretrained(str(model_dir))
    table = pa.Table.from_pylist(rows)
    seq = max(len(r["input_ids"]) for r in rows)
    t_start, tokens, i = None, 0, 0
    for step in range(steps):
        group = []
        for _ in range(accum):
            group.append(to_micro_batch(table.slice(i % len(rows), micro), max_seq_len=seq))
            i += micro
        m = loop._train_step(engine, group, solo, spec, 1, torch.device("cpu"), model_config)
        if step == skip:
            t_start = time.perf_counter()
        elif step > skip:
            tokens += m["tokens"]
    return tokens / (time.perf_counter() - t_start)


def _solo_child(model_dir: Path, rows: list[dict], cfg, micro: int, accum: int, steps: int, skip: int,
                out: Any) -> None:
    out.put(step_in_process(model_dir, rows, cfg, micro, accum, steps, skip))


def solo(model_dir: Path, rows: list[dict], cfg, zero_stage: int, micro: int, accum: int, steps: int,
         skip: int) -> float:
    """`step_in_process` at `zero_stage` in a fresh process (DeepSpeed keeps its process groups per
    process, so one engine per process)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_solo_child, args=(model_dir, rows, cfg.model_copy(update={"zero_stage": zero_stage}),
                                                  micro, accum, steps, skip, out))
    child.start()
    tps = out.get()
    child.join()
    return tps


def in_step_share(history: list[dict], skip: int) -> float:
    """Share of the steady wall time spent inside the optimizer steps (the rest: reading the next
    micro-batches, reports, heartbeats, log lines)."""
    h = history[skip:]
    wall = h[-1]["time"] - h[0]["time"]
    return sum(x["step_time_s"] for x in h[1:]) / wall


def between_steps(history: list[dict], skip: int) -> list[float]:
    """Seconds each steady step spent outside `_train_step` (waiting for its micro-batches, reporting)."""
    h = history[skip:]
    return [round(b["time"] - a["time"] - b["step_time_s"], 3) for a, b in zip(h, h[1:], strict=False)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="CUDA workers, bf16, MFU (needs GPUs)")
    ap.add_argument("--shape", default=None, choices=sorted(SHAPES), help="default: tiny on CPU, qwen2.5-0.5b on GPU")
    ap.add_argument("--model", default=None, help="a model directory to train instead of a random --shape")
    ap.add_argument("--seq-len", type=int, default=None, help="default: 1024 CPU, 16384 GPU")
    ap.add_argument("--rows", type=int, default=None, help="packed rows (default: 48 CPU, 64 GPU)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--micro", type=int, default=1)
    ap.add_argument("--global-batch", type=int, default=None, help="default: 4 × workers × micro")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--skip", type=int, default=2, help="warm-up steps left out of the throughput")
    ap.add_argument("--no-plain", action="store_true", help="skip the single-process baseline")
    ap.add_argument("--breakdown", action="store_true",
                    help="also run the stage's own step in this process (DeepSpeed ZeRO-3, world 1, no Ray)")
    ap.add_argument("--no-leaf-blocks", action="store_true",
                    help="ZeRO-3 hooks every module, as before zero3_leaf_blocks (to price that knob)")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded Ray (default: all)")
    ap.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    shape = args.shape or ("qwen2.5-0.5b" if args.gpu else "tiny")
    seq_len = args.seq_len or (16384 if args.gpu else 1024)
    n_rows = args.rows or (64 if args.gpu else 48)
    global_batch = args.global_batch or 4 * args.workers * args.micro

    from valley import runtime
    from valley.demo import build_demo_tokenizer
    from valley.storage import Storage
    from valley.train.config import TrainConfig
    from valley.train.stage import run_train

    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    if args.model:  # a real student's directory (`valley model smollm2`): its weights, its tokenizer
        model_dir = tok_dir = Path(args.model).resolve()
        shape = model_dir.name.lower()
    else:
        tok_dir = build_demo_tokenizer(tmp / "tok")
        model_dir = build_model(tmp, shape, tok_dir)
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(str(model_dir)).vocab_size
    rows = synthetic_rows(n_rows, seq_len, min(vocab, 1024), seed=0)
    storage = Storage(str(tmp / "store"))
    data = write_data(storage, rows, tok_dir, seq_len)
    fill = sum(r["n_tokens"] for r in rows) / (len(rows) * seq_len)
    runtime.init(num_cpus=args.num_cpus)
    # leave one CPU for Ray Data's read/shuffle tasks
    cpus = max(0.25, ((args.num_cpus or os.cpu_count() or 2) - 1) / args.workers) if not args.gpu else 4
    cfg = TrainConfig(data=data, model=str(model_dir), num_workers=args.workers, use_gpu=args.gpu,
                      micro_batch_size=args.micro, global_batch_size=global_batch, epochs=args.epochs,
                      max_seq_len=seq_len, learning_rate=1e-5, cpus_per_worker=cpus,
                      checkpoint_every_steps=10**6, max_failures=0, shuffle=True,
                      zero3_leaf_blocks=not args.no_leaf_blocks)
    t0 = time.perf_counter()
    result = run_train(cfg, storage)
    wall = time.perf_counter() - t0
    history = [json.loads(x) for x in storage.read_text(result.metrics_path).splitlines()]
    skip = min(args.skip, len(history) - 2)
    stage_tps, mfus = steady(history, skip)
    out = {
        "date": dt.date.today().isoformat(), "device": "gpu" if args.gpu else "cpu", "shape": shape,
        "seq_len": seq_len, "rows": n_rows, "fill": round(fill, 3), "workers": args.workers, "micro": args.micro,
        "global_batch": global_batch, "steps": len(history), "stage_wall_s": round(wall, 1),
        "stage_tokens_per_s": round(stage_tps, 1), "zero3_leaf_blocks": cfg.zero3_leaf_blocks,
        "stage_in_step_share": round(in_step_share(history, skip), 3),
        "stage_between_steps_s": between_steps(history, skip),
    }
    print(f"train stage ({args.workers} Ray workers, ZeRO-{cfg.zero_stage}, {shape}, seq {seq_len}, fill {fill:.0%}): "
          f"{stage_tps:,.0f} tokens/s steady over {len(history) - skip - 1} steps; whole stage {wall:.1f} s "
          "(Ray start, DeepSpeed init, checkpoint, export included)")
    if mfus:
        out["mfu_median"] = statistics.median(mfus)
        print(f"MFU median {out['mfu_median']:.1%} (min {min(mfus):.1%}, max {max(mfus):.1%})")
    if not args.no_plain:
        plain_steps = min(len(history), 12)
        plain_tps = plain_loop(model_dir, rows, args.micro, cfg.grad_accum_steps() * args.workers, plain_steps,
                               args.gpu, min(skip, plain_steps - 2))
        out["plain_tokens_per_s"] = round(plain_tps, 1)
        out["ratio_stage_vs_plain"] = round(stage_tps / plain_tps, 3)
        print(f"plain single-process torch loop (same model, data, global batch): {plain_tps:,.0f} tokens/s")
        if args.breakdown and not args.gpu:
            for zero_stage in (0, 3):
                solo_tps = solo(model_dir, rows, cfg, zero_stage, args.micro, cfg.grad_accum_steps() * args.workers,
                                plain_steps, min(skip, plain_steps - 2))
                out[f"zero{zero_stage}_world1_tokens_per_s"] = round(solo_tps, 1)
                print(f"the stage's step in one process (ZeRO-{zero_stage}, world 1, no Ray, rows from memory): "
                      f"{solo_tps:,.0f} tokens/s = {solo_tps / plain_tps:.2f} of plain")
            print(f"the stage spends {out['stage_in_step_share']:.0%} of its steady wall time inside steps")
        print(f"ratio stage / plain = {stage_tps / plain_tps:.2f}  (1.0: Ray Train + ZeRO-3 over {args.workers} workers "
              "costs nothing over one process on the same devices/cores; <1: their overhead; >1: their parallelism)")
    Path(args.results).mkdir(parents=True, exist_ok=True)
    res = Path(args.results) / f"train-{out['date']}-{out['device']}-{shape}.json"
    res.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {res}")
    runtime.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
