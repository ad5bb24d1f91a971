"""Data stage benchmark: five measures, in one run or each alone.

1. throughput: tokens/s of the whole data stage (ingest, validate, template, tokenize, mask, pack, write) vs
   the raw `tokenizers` batch encoder on the same rendered texts on the same cores, the median of
   fresh-process rounds; on the synthetic corpus (demo tokenizer) and on real DeepSeek-R1 traces
   (../shared/data/traces, Qwen2.5 tokenizer, 32K rows) when present. The raw encoder is timed twice:
   `encode_batch` with offsets (the issue's baseline) and `encode_batch_fast` without them (the call the
   stage makes for byte-level tokenizers, data/byte_spans.py). Each round also splits the stage's time into
   its fixed start-up (until the first documents task) and the documents step, and counts the CPU seconds
   each side cost the machine; several --throughput-traces sizes make a scale sweep;
2. pack efficiency at 32K of best-fit decreasing vs naive in-order greedy packing, on the token lengths of
   real R1 code-reasoning traces (../shared/data/traces, Qwen tokenizer) when present;
3. peak RSS (driver + Ray workers) of the stage on N vs 10·N synthetic traces: streaming means the ratio
   stays far below 10;
4. the join (issue 10): OpenCodeReasoning-2-shaped traces with "-" questions joined on (dataset, split,
   index) to a TACO-shaped source, ingest + join only, at N and 10·N traces: peak RSS ratio (limit 1.2:
   no table on the driver, bounded tasks) and traces/s;
5. each trace tokenized once (issue 29): the paper's subset set scaled down 10x (nested r100 ⊂ r1000 ⊂ r3000
   ⊂ r10000, correct/incorrect 600 and easy/hard 400 TACO-like traces) on the throughput corpus: the
   distinct traces the manifest counts as tokenized vs the subsets' memberships, and the data stage's wall
   time against the code of `--baseline` (a commit, run from `git archive` in a fresh process each round,
   which tokenizes every subset on its own), rounds interleaved on the same cores.

    python benchmarks/bench_data.py --small 100000 --large 1000000 --join-small 100000 --join-large 1000000
    python benchmarks/bench_data.py --join-only --join-small 100000 --join-large 1000000   # just the join
    python benchmarks/bench_data.py --subsets-only --baseline 47f5a5a   # just ratio 5
    python benchmarks/bench_data.py --throughput-only --throughput-rounds 3 --r1-traces 2000   # just ratio 1
    python benchmarks/bench_data.py --throughput-only --throughput-traces 20000 50000 100000 --r1-traces 0   # its sweep
    python benchmarks/bench_data.py --rss-only --small 100000 --large 1000000   # just ratio 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_corpus(path: Path, n: int, seed: int = 0) -> None:
    from valley.demo import make_traces

    with path.open("w", encoding="utf-8") as f:
        for start in range(0, n, 50_000):
            for row in make_traces(min(50_000, n - start), seed=seed + start):
                row["id"] = f"{start}-{row['id']}"
                f.write(json.dumps(row) + "\n")


R1_RESPONSES = SHARED / "traces" / "think-with-feedback__codeforces-cots_r1_original_responses_1247.tar.gz"
R1_PROMPTS = SHARED / "traces" / "think-with-feedback__r1_traces_with_prompts_10.tar.gz"


def write_r1_corpus(path: Path, n: int) -> dict | None:
    """n traces of real DeepSeek-R1 responses (1,247 distinct, taken in turn) under the 10 real codeforces-cots
    prompts (taken in turn, since the responses' own prompts are not in ../shared); None without ../shared."""
    if not R1_RESPONSES.exists() or not R1_PROMPTS.exists():
        return None
    with tarfile.open(R1_RESPONSES) as tar:
        responses = [tar.extractfile(m).read().decode("utf-8") for m in sorted(tar.getmembers(), key=lambda m: m.name)
                     if m.isfile() and m.name.endswith("response.md")]
    with tarfile.open(R1_PROMPTS) as tar:
        prompts = [tar.extractfile(m).read().decode("utf-8") for m in sorted(tar.getmembers(), key=lambda m: m.name)
                   if m.isfile() and m.name.endswith("prompt.md")]
    with path.open("w", encoding="utf-8") as f:
        for k in range(n):
            f.write(json.dumps({"id": f"r1-{k}", "question_id": f"cf-{k % len(prompts)}",
                                "question": prompts[k % len(prompts)], "response": responses[k % len(responses)],
                                "source": "codeforces-cots", "teacher": "DeepSeek-R1"}) + "\n")
    return {"responses_distinct": len(responses), "prompts_distinct": len(prompts), "traces": n}


def busy_core_seconds() -> float:
    """CPU seconds every core of the machine has spent busy since boot (psutil's system-wide times): the
    difference over a window is what the window cost the whole machine, Ray's own processes included."""
    t = psutil.cpu_times()
    # idle and waiting on I/O are not busy; Linux counts guest time inside user time too (not twice here)
    not_busy = [getattr(t, name, 0.0) for name in ("idle", "iowait", "guest", "guest_nice")]
    return sum(t) - sum(not_busy)


def _spent(since: float) -> float:
    return round(busy_core_seconds() - since, 2)


def throughput_child(corpus: str, tok_dir: str, store: str, seq_len: str) -> None:
    """One round, in a fresh process (so nothing the stage imports or starts is warm from an earlier round):
    the data stage on a started Ray, then the raw encoder on the same texts, in the same minute. Also
    when the stage's documents step began (everything before it is fixed start-up: worker imports,
    ingest, selection, the driver's tokenizer load) and the CPU each side cost the machine."""
    from valley import runtime
    from valley.data import stage
    from valley.data.chat import ChatEncoder
    from valley.data.config import DataConfig
    from valley.data.stage import run_data
    from valley.storage import Storage

    documents_began: list[float] = []
    run_documents = stage.run_documents

    def timed_documents(*args, **kwargs):
        documents_began.append(time.perf_counter())
        return run_documents(*args, **kwargs)

    stage.run_documents = timed_documents
    runtime.init()
    cfg = DataConfig(name="bench", inputs=[corpus], tokenizer=tok_dir, max_seq_len=int(seq_len),
                     chunk_rows=20_000, group_docs=4096)
    cpu = busy_core_seconds()
    t0 = time.perf_counter()
    result = run_data(cfg, Storage(store))
    end = time.perf_counter()
    pipeline_s, pipeline_cpu = end - t0, _spent(cpu)
    runtime.shutdown()
    # The naive baseline: the Rust encoder alone, batch-encoding pre-rendered texts, nothing else.
    encoder = ChatEncoder(tok_dir)
    with Path(corpus).open(encoding="utf-8") as f:
        texts = [encoder.render(r["question"], r["response"])[0] for r in map(json.loads, f)]
    cpu = busy_core_seconds()
    t0 = time.perf_counter()
    raw_tokens = sum(len(e.ids) for e in encoder.backend.encode_batch(texts, add_special_tokens=False))
    raw_s, raw_cpu = time.perf_counter() - t0, _spent(cpu)
    # The encoder's cheaper call, without offsets, which the stage itself uses for byte-level tokenizers.
    t0 = time.perf_counter()
    fast_tokens = sum(len(e.ids) for e in encoder.backend.encode_batch_fast(texts, add_special_tokens=False))
    fast_s = time.perf_counter() - t0
    print(json.dumps({"traces": len(texts), "pipeline_tokens": result.subsets["all"]["tokens"],
                      "pipeline_s": pipeline_s, "documents_s": end - documents_began[0],
                      "pipeline_core_s": pipeline_cpu, "raw_encoder_tokens": raw_tokens, "raw_encoder_s": raw_s,
                      "raw_encoder_core_s": raw_cpu, "raw_fast_tokens": fast_tokens, "raw_fast_s": fast_s,
                      "pipeline_without_offsets": encoder.byte_lengths is not None,
                      "pack_efficiency": result.subsets["all"]["pack_efficiency"]}))


def throughput(corpus: Path, tok_dir: Path, workdir: Path, seq_len: int, rounds: int) -> dict:
    """Pipeline / raw encoder over `rounds` fresh-process rounds: the median of each round's ratio, since
    this machine's speed drifts by 10-20% over minutes and both sides of a round share its minute."""
    runs = []
    for k in range(rounds):
        store = workdir / f"throughput-store-{k}"
        out = subprocess.run([sys.executable, __file__, "--throughput-child", str(corpus), str(tok_dir), str(store),
                              str(seq_len)], check=True, capture_output=True, text=True,
                             env=dict(os.environ, RAY_AUTH_MODE="disabled"))
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        shutil.rmtree(store, ignore_errors=True)
    for r in runs:
        pipeline = r["pipeline_tokens"] / r["pipeline_s"]
        r["ratio"] = round(pipeline / (r["raw_encoder_tokens"] / r["raw_encoder_s"]), 3)
        r["ratio_fast"] = round(pipeline / (r["raw_fast_tokens"] / r["raw_fast_s"]), 3)
    mid = sorted(runs, key=lambda r: r["ratio"])[len(runs) // 2]
    mid_fast = sorted(runs, key=lambda r: r["ratio_fast"])[len(runs) // 2]
    return {
        "traces": mid["traces"],
        "pipeline_tokens": mid["pipeline_tokens"],
        "pipeline_s": round(mid["pipeline_s"], 2),
        "pipeline_tok_per_s": round(mid["pipeline_tokens"] / mid["pipeline_s"]),
        "raw_encoder_tokens": mid["raw_encoder_tokens"],
        "raw_encoder_s": round(mid["raw_encoder_s"], 2),
        "raw_encoder_tok_per_s": round(mid["raw_encoder_tokens"] / mid["raw_encoder_s"]),
        "ratio_pipeline_vs_raw": mid["ratio"],
        "ratios_per_round": [r["ratio"] for r in runs],
        "raw_fast_tok_per_s": round(mid_fast["raw_fast_tokens"] / mid_fast["raw_fast_s"]),
        "ratio_pipeline_vs_raw_fast": mid_fast["ratio_fast"],
        "ratios_fast_per_round": [r["ratio_fast"] for r in runs],
        "pipeline_without_offsets": mid["pipeline_without_offsets"],
        "seconds_per_round": [[round(r["pipeline_s"], 2), round(r["raw_encoder_s"], 2), round(r["raw_fast_s"], 2)]
                              for r in runs],
        # where the stage's time goes: fixed start-up before the first documents task, then the documents
        "start_up_s": round(mid["pipeline_s"] - mid["documents_s"], 2),
        "documents_s": round(mid["documents_s"], 2),
        "ratio_documents_step_vs_raw": round(mid["raw_encoder_s"] / mid["documents_s"], 3),
        # what each side cost the machine's cores
        "pipeline_core_s": mid["pipeline_core_s"],
        "raw_encoder_core_s": mid["raw_encoder_core_s"],
        "pack_efficiency": mid["pack_efficiency"],
    }


def r1_lengths(workdir: Path) -> list[int] | None:
    """Token lengths of real R1 traces (question-less: response only) with the Qwen tokenizer."""
    archive = SHARED / "traces" / "think-with-feedback__codeforces-cots_r1_original_responses_1247.tar.gz"
    if not archive.exists():
        return None
    import real_tokenizers
    from valley.data.chat import load_tokenizer

    tok = load_tokenizer(str(real_tokenizers.qwen25_dir(SHARED, workdir / "qwen25")))
    with tarfile.open(archive) as tar:
        texts = [tar.extractfile(m).read().decode("utf-8") for m in tar.getmembers() if m.isfile()]
    enc = tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    return [len(e.ids) + 200 for e in enc]  # + a typical prompt and template overhead


def packing(lengths: list[int], seq_len: int) -> dict:
    from valley.data.packing import Doc, pack_best_fit, pack_efficiency

    lengths = [min(n, seq_len) for n in lengths]
    docs = [Doc(str(i), [0] * n, [1] * n) for i, n in enumerate(lengths)]
    best = pack_efficiency(pack_best_fit(docs, seq_len, 0), seq_len)
    rows, room = 0, 0
    for n in lengths:  # naive: fill the current row in order, open a new one when the doc does not fit
        if n > room:
            rows, room = rows + 1, seq_len
        room -= n
    naive = sum(lengths) / (rows * seq_len)
    return {"docs": len(lengths), "median_tokens": sorted(lengths)[len(lengths) // 2], "seq_len": seq_len,
            "best_fit_efficiency": round(best, 4), "naive_efficiency": round(naive, 4),
            "ratio_best_fit_vs_naive": round(best / naive, 3)}


def peak_rss_of_run(n: int, tok_dir: Path, workdir: Path) -> dict:
    """Run the stage in a fresh process on n traces; sample the RSS of it and all its children."""
    corpus = workdir / f"corpus-{n}.jsonl"
    write_corpus(corpus, n, seed=1)
    cfg = workdir / f"cfg-{n}.json"
    cfg.write_text(json.dumps({"name": f"rss{n}", "inputs": [str(corpus)], "tokenizer": str(tok_dir),
                               "max_seq_len": 4096}))
    cmd = [sys.executable, "-m", "valley.cli", "data", str(cfg), "--storage", str(workdir / f"rss-{n}")]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    peak, driver_peak = 0, 0
    root = psutil.Process(proc.pid)
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak, driver_peak
        while not stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in procs if p.is_running())
                peak = max(peak, rss)
                driver_peak = max(driver_peak, root.memory_info().rss)
            except psutil.Error:
                pass
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    rc = proc.wait()
    stop.set()
    thread.join()
    if rc != 0:
        raise SystemExit(f"data stage on {n} traces failed (exit {rc})")
    corpus.unlink()
    return {"traces": n, "seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb_all": peak >> 20,
            "peak_rss_mb_driver": driver_peak >> 20}


TACO_ROWS = 26_443  # BAAI/TACO train + test


def write_join_corpus(workdir: Path, n: int) -> tuple[Path, Path]:
    """n OCR-2-shaped traces (all string columns, question "-") over TACO_ROWS TACO-shaped problems."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    taco = workdir / "taco"
    if not taco.exists():
        taco.mkdir()
        for shard, start in enumerate(range(0, TACO_ROWS, 10_000)):
            k = range(start, min(start + 10_000, TACO_ROWS))
            pq.write_table(pa.table({
                "question": [f"Problem {i}: read n and print n + {i}. " + "Statement text. " * 40 for i in k],
                "input_output": [json.dumps({"inputs": [f"{j}\n" for j in range(20)],
                                             "outputs": [f"{j + i}\n" for j in range(20)]}) for i in k],
                "difficulty": [("EASY", "MEDIUM", "MEDIUM_HARD", "HARD", "VERY_HARD")[i % 5] for i in k],
                "starter_code": [""] * len(k), "name": [f"p{i}" for i in k]}),
                taco / f"train-{shard:05d}-of-00003.parquet", row_group_size=5_000)
    ocr2 = workdir / f"ocr2-{n}"
    ocr2.mkdir()
    body = "<think>" + "Let me reason about the loop bounds. " * 30 + "</think>\n```python\nprint(int(input()) + %d)\n```"
    per_file = 200_000
    for f, start in enumerate(range(0, n, per_file)):
        k = range(start, min(start + per_file, n))
        cols = {c: ["-"] * len(k) for c in ("question", "qwq_critique", "solution", "judgement", "pass_rate",
                                             "source", "license", "difficulty")}
        cols.update(r1_generation=[body % (i % TACO_ROWS) for i in k], dataset=["taco"] * len(k),
                    split=["train"] * len(k), index=[str(i % TACO_ROWS) for i in k], id=[f"t{i}" for i in k],
                    question_id=[f"taco-{i % TACO_ROWS}" for i in k])
        pq.write_table(pa.table(cols), ocr2 / f"part-{f:05d}.parquet", row_group_size=20_000)
    return ocr2, taco


def join_child(cfg_path: str, store: str) -> None:
    """Runs in its own process: ingest + join only, then prints the counts (what the parent measures)."""
    from valley import runtime
    from valley.data.config import DataConfig
    from valley.data.readers import expand_inputs
    from valley.data.stage import build_traces
    from valley.storage import Storage

    runtime.init()
    cfg = DataConfig.model_validate_json(Path(cfg_path).read_text())
    reasons, _, joins = build_traces(cfg, Storage(store), "join-bench", expand_inputs(cfg.inputs))
    print(json.dumps({"rejected": dict(reasons), "joins": joins}))


def _sample_tree(proc: subprocess.Popen) -> tuple[int, int]:
    """Peak RSS of a process and all its descendants (Ray workers included), and of the process alone."""
    peak, driver_peak = 0, 0
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            driver_peak = max(driver_peak, root.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.2)
    return peak, driver_peak


def join_rss(n: int, tok_dir: Path, workdir: Path) -> dict:
    ocr2, taco = write_join_corpus(workdir, n)
    cfg = {"name": f"join{n}", "inputs": [f"{ocr2}/*.parquet"], "tokenizer": str(tok_dir),
           "columns": {"preset": "ocr2"}, "join_partitions": 16,
           "joins": [{"name": "taco", "preset": "taco", "on": ["dataset", "split", "index"],
                      "from": {"train": [f"{taco}/*.parquet"]}}]}
    cfg_path = workdir / f"join-{n}.json"
    cfg_path.write_text(json.dumps(cfg))
    cmd = [sys.executable, __file__, "--join-child", str(cfg_path), str(workdir / f"join-store-{n}")]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    peak, driver_peak = _sample_tree(proc)
    seconds = time.perf_counter() - t0
    out = proc.stdout.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"join on {n} traces failed (exit {proc.returncode})")
    counts = json.loads(out.strip().splitlines()[-1])
    matched = counts["joins"]["taco"]["matched"]
    if matched != n:
        raise SystemExit(f"join on {n} traces matched {matched}: {counts}")
    subprocess.run(["rm", "-rf", str(ocr2), str(workdir / f"join-store-{n}")], check=False)
    return {"traces": n, "seconds": round(seconds, 1), "traces_per_s": round(n / seconds),
            "peak_rss_mb_all": peak >> 20, "peak_rss_mb_driver": driver_peak >> 20, "matched": matched}


PAPER_SUBSETS_10X = [
    *({"name": f"r{n}", "kind": "random", "size": n} for n in (100, 1000, 3000, 10000)),
    {"name": "correct", "kind": "correct", "sources": ["demo-taco"], "size": 600},
    {"name": "incorrect", "kind": "incorrect", "sources": ["demo-taco"], "size": 600},
    {"name": "easy", "kind": "easy", "sources": ["demo-taco"], "size": 400},
    {"name": "hard", "kind": "hard", "sources": ["demo-taco"], "size": 400},
]


def write_labelled_corpus(path: Path, n: int) -> None:
    """The throughput corpus with TACO-like traces labelled (4 in 5 correct), as after `valley label`."""
    write_corpus(path.with_suffix(".tmp"), n)
    with path.with_suffix(".tmp").open(encoding="utf-8") as src, path.open("w", encoding="utf-8") as out:
        for i, line in enumerate(src):
            row = json.loads(line)
            if row["source"] == "demo-taco":
                row["correct"] = i % 5 != 0
            out.write(json.dumps(row) + "\n")
    path.with_suffix(".tmp").unlink()


def subsets_child(cfg_path: str, store: str) -> None:
    """Runs in its own process (under either tree): the data stage on the subset set, timed, then what it
    tokenized (the manifest's `documents`; before documents, every subset's traces)."""
    from valley import runtime
    from valley.data.config import DataConfig
    from valley.data.stage import run_data
    from valley.storage import Storage

    runtime.init()
    cfg = DataConfig.model_validate_json(Path(cfg_path).read_text())
    t0 = time.perf_counter()
    result = run_data(cfg, Storage(store))
    seconds = time.perf_counter() - t0
    manifest = json.loads(Path(store, result.stage_dir, "manifest.json").read_text())
    memberships = sum(s["rows"] for s in result.subsets.values())
    documents = manifest.get("documents")
    print(json.dumps({"seconds": round(seconds, 2), "memberships": memberships,
                      "traces_tokenized": documents["traces"] if documents else memberships,
                      "documents": documents, "tokens_packed": sum(s["tokens"] for s in result.subsets.values()),
                      "subsets": {k: {f: v[f] for f in ("rows", "sequences", "tokens")} for k, v in result.subsets.items()}}))


def subset_set(corpus: Path, tok_dir: Path, work: Path, baseline: str | None, rounds: int) -> dict:
    """Ratio 5: the subset set under this tree and (interleaved) under `baseline`; medians of `rounds`."""
    cfg = work / "subsets.json"
    cfg.write_text(json.dumps({"name": "subsets", "inputs": [str(corpus)], "tokenizer": str(tok_dir),
                               "max_seq_len": 4096, "chunk_rows": 20_000, "group_docs": 4096,
                               "subsets": PAPER_SUBSETS_10X}))
    trees = {"documents": None}
    if baseline:
        old = work / f"baseline-{baseline}"
        old.mkdir()
        repo = Path(__file__).resolve().parents[1]
        archive = subprocess.run(["git", "-C", str(repo), "archive", baseline, "platform"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        trees[f"baseline {baseline}"] = str(old / "platform")
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for r in range(rounds):
        for name, platform in trees.items():
            env = dict(os.environ, RAY_AUTH_MODE="disabled")
            if platform:
                env["PYTHONPATH"] = platform
            store = work / f"subsets-store-{r}-{len(runs[name])}-{name.split()[0]}"
            proc = subprocess.run([sys.executable, __file__, "--subsets-child", str(cfg), str(store)], env=env,
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{name}: the data stage failed:\n{proc.stderr[-3000:]}")
            out = proc.stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
            subprocess.run(["rm", "-rf", str(store)], check=False)
            print(name, json.dumps({k: v for k, v in runs[name][-1].items() if k != "subsets"}), flush=True)
    report: dict = {"subsets": PAPER_SUBSETS_10X, "rounds": rounds}
    for name, results in runs.items():
        seconds = sorted(x["seconds"] for x in results)
        report[name] = {**{k: v for k, v in results[0].items() if k != "seconds"}, "seconds": seconds,
                        "median_s": seconds[len(seconds) // 2]}
    if baseline:
        new, old = report["documents"], report[f"baseline {baseline}"]
        if new["subsets"] != old["subsets"]:
            raise SystemExit("the subsets differ between the trees")
        report["ratio_time_documents_vs_baseline"] = round(new["median_s"] / old["median_s"], 3)
        report["ratio_traces_tokenized"] = round(new["traces_tokenized"] / old["traces_tokenized"], 3)
    return report



def _print_and_save(report: dict, out: str | None) -> None:
    """A partial run's report (--join-only, --subsets-only): printed, and saved where --out says."""
    print(json.dumps(report, indent=2))
    if out:
        Path(out).write_text(json.dumps(report, indent=2) + "\n")

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--throughput-traces", type=int, nargs="+", default=[20_000],
                    help="synthetic corpus sizes of ratio 1: the first is the issue's figure, more make a scale "
                         "sweep (how the stage's fixed start-up weighs as the corpus grows)")
    ap.add_argument("--small", type=int, default=100_000)
    ap.add_argument("--large", type=int, default=1_000_000)
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--join-small", type=int, default=100_000)
    ap.add_argument("--join-large", type=int, default=1_000_000)
    ap.add_argument("--skip-join", action="store_true")
    ap.add_argument("--join-only", action="store_true", help="measure only the join (ratio 4)")
    ap.add_argument("--join-child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--subsets-only", action="store_true", help="measure only the subset set (ratio 5)")
    ap.add_argument("--skip-subsets", action="store_true")
    ap.add_argument("--baseline", default=None, help="a commit whose data stage ratio 5 is timed against")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of ratio 5 (median reported)")
    ap.add_argument("--subsets-child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--throughput-child", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--throughput-rounds", type=int, default=3, help="fresh-process rounds of ratio 1 (median)")
    ap.add_argument("--r1-traces", type=int, default=2000,
                    help="ratio 1 again on this many real R1 traces with the Qwen2.5 tokenizer (0: skip)")
    ap.add_argument("--throughput-only", action="store_true", help="measure only ratio 1 (both corpora)")
    ap.add_argument("--rss-only", action="store_true", help="measure only ratio 3 (--small vs --large traces)")
    ap.add_argument("--out", default=None, help="write the JSON results here too")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.join_child:
        join_child(*args.join_child)
        return
    if args.subsets_child:
        subsets_child(*args.subsets_child)
        return
    if args.throughput_child:
        throughput_child(*args.throughput_child)
        return
    from valley.demo import build_demo_tokenizer

    report: dict = {"cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tok = build_demo_tokenizer(work / "tok")
        only_one = args.subsets_only or args.throughput_only or args.rss_only
        if not args.skip_join and not only_one:
            small = join_rss(args.join_small, tok, work)
            print(json.dumps(small), flush=True)
            large = join_rss(args.join_large, tok, work)
            print(json.dumps(large), flush=True)
            report["join"] = {"small": small, "large": large, "limit": 1.2,
                              "ratio_peak_rss_large_vs_small": round(large["peak_rss_mb_all"] / small["peak_rss_mb_all"], 3),
                              "ratio_traces": args.join_large / args.join_small}
            print(json.dumps(report["join"]), flush=True)
        if args.join_only:
            return _print_and_save(report, args.out)
        if args.subsets_only or not (args.skip_subsets or only_one):
            labelled = work / "labelled.jsonl"
            write_labelled_corpus(labelled, args.throughput_traces[0])
            report["subset_set"] = subset_set(labelled, tok, work, args.baseline, args.rounds)
            print(json.dumps(report["subset_set"]), flush=True)
        if args.subsets_only:
            return _print_and_save(report, args.out)
        if not args.rss_only:
            for n in args.throughput_traces:
                corpus = work / f"corpus-{n}.jsonl"
                write_corpus(corpus, n)
                measured = throughput(corpus, tok, work, seq_len=4096, rounds=args.throughput_rounds)
                corpus.unlink()
                print(json.dumps(measured), flush=True)
                report.setdefault("throughput", measured)
                if len(args.throughput_traces) > 1:
                    report.setdefault("throughput_by_size", []).append(measured)
            r1_corpus = work / "r1.jsonl"
            made = write_r1_corpus(r1_corpus, args.r1_traces) if args.r1_traces else None
            if made:
                import real_tokenizers

                qwen = real_tokenizers.qwen25_dir(SHARED, work / "qwen25")
                report["throughput_r1"] = {**made, "tokenizer": "Qwen2.5 (../shared Qwen3 files, Qwen2.5 template)",
                                           **throughput(r1_corpus, qwen, work, seq_len=32768, rounds=args.throughput_rounds)}
                print(json.dumps(report["throughput_r1"]), flush=True)
            if args.throughput_only:
                return _print_and_save(report, args.out)
            lengths = r1_lengths(work)
            if lengths:
                report["packing_32k_r1"] = packing(lengths, 32768)
                print(json.dumps(report["packing_32k_r1"]), flush=True)
        if not args.skip_rss:
            small = peak_rss_of_run(args.small, tok, work)
            print(json.dumps(small), flush=True)
            large = peak_rss_of_run(args.large, tok, work)
            print(json.dumps(large), flush=True)
            report["rss"] = {"small": small, "large": large,
                             "ratio_peak_rss_large_vs_small": round(large["peak_rss_mb_all"] / small["peak_rss_mb_all"], 3),
                             "ratio_traces": args.large / args.small}
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
