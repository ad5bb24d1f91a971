"""Decontamination benchmark: N synthetic training traces (a known share planted from the LCB problems in
shared/data/lcb, exact and near copies) streamed through `run_decontam` against all shared LCB problems.

Printed, from one run:
1. traces/s of the stage (Ray Data, matcher actors) and of the naive way (one process, a Python set of
   word-tuple 13-grams per problem, every question against every problem's set), ratio stage / naive;
2. recall of the planted copies and false positives among the clean traces (goal 1.0 and 0);
3. the driver's peak RSS (it holds the n-gram index and the matches, never the traces).

Full measurement (quiet machine, 2 cores; writes ~1M traces of ~1.5 KB to a temporary directory first):
    .venv/bin/python benchmarks/bench_decontam.py --traces 1000000 --cpus 2
Quick check: --traces 5000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "platform"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # embedded cluster: no token (as the other benchmarks)

VOCAB = ["array", "integer", "string", "query", "answer", "minimum", "maximum", "graph", "tree", "node", "edge",
         "path", "cost", "value", "index", "pair", "sum", "product", "prefix", "suffix", "window", "segment",
         "color", "grid", "cell", "row", "column", "move", "step", "turn", "player", "game"]


def synthetic_question(rng: random.Random, n_words: int = 220) -> str:
    return " ".join(rng.choice(VOCAB) + (str(rng.randint(0, 999)) if rng.random() < 0.3 else "")
                    for _ in range(n_words))


def write_corpus(out: Path, n: int, problems: list[dict], plant_every: int, seed: int,
                 rows_per_file: int = 100_000) -> set[str]:
    """Parquet traces; every `plant_every`-th trace is a (near) copy of an LCB problem. Returns planted ids."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    planted: set[str] = set()
    out.mkdir(parents=True, exist_ok=True)
    for start in range(0, n, rows_per_file):
        rows = []
        for i in range(start, min(n, start + rows_per_file)):
            tid = f"t{i}"
            if i % plant_every == 0:
                words = rng.choice(problems)["question_content"].split()
                if i % (2 * plant_every) == 0:  # near copy: every 30th word changed, upper-cased
                    words = [("CHANGED" if k % 30 == 0 else w.upper()) for k, w in enumerate(words)]
                question = "Solve:\n" + " ".join(words)
                planted.add(tid)
            else:
                question = synthetic_question(rng)
            rows.append({"id": tid, "question_id": f"q{i}", "question": question, "response": "ok",
                         "source_file": "synthetic", "source_row": i})
        pq.write_table(pa.Table.from_pylist(rows), out / f"part-{start // rows_per_file:05d}.parquet",
                       row_group_size=10_000)
    return planted


def naive(questions: list[str], problems: list[dict], n: int = 13, min_overlap: float = 0.2) -> int:
    """One process, Python sets of word tuples: the way one writes it first."""
    from valley.decontam.text import words

    sets = []
    for p in problems:
        w = words(p["question_content"])
        sets.append({tuple(w[i:i + n]) for i in range(len(w) - n + 1)})
    flagged = 0
    for q in questions:
        w = words(q)
        grams = {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}
        flagged += any(s and len(grams & s) / len(s) >= min_overlap for s in sets)
    return flagged


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", type=int, default=5000)
    ap.add_argument("--plant-every", type=int, default=500)
    ap.add_argument("--naive-sample", type=int, default=2000, help="traces timed with the naive way")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    lcb = sorted((SHARED / "lcb").glob("*.jsonl"))
    if not lcb:
        print(f"shared LCB problems not found under {SHARED}")
        return 1
    import pyarrow.parquet as pq

    from valley import runtime
    from valley.decontam.config import DecontamConfig
    from valley.decontam.stage import run_decontam
    from valley.problems import iter_json_records
    from valley.storage import Storage

    problems = [r for f in lcb for _, r in iter_json_records(f)]
    tmp = Path(tempfile.mkdtemp(prefix="bench-decontam-"))
    t0 = time.perf_counter()
    planted = write_corpus(tmp / "corpus", args.traces, problems, args.plant_every, args.seed)
    print(f"wrote {args.traces} traces ({len(planted)} planted) in {time.perf_counter() - t0:.1f} s")

    runtime.init(num_cpus=args.cpus)
    storage = Storage(str(tmp / "store"))
    cfg = DecontamConfig(traces=str(tmp / "corpus"), problems=[str(p) for p in lcb], kinds=["ngram"])
    t1 = time.perf_counter()
    res = run_decontam(cfg, storage)
    stage_s = time.perf_counter() - t1
    flagged = set(pq.read_table(storage.path(res.matches), columns=["id"]).column("id").to_pylist())
    recall = len(flagged & planted) / len(planted) if planted else 1.0
    false_pos = len(flagged - planted)

    sample = pq.read_table(tmp / "corpus" / "part-00000.parquet", columns=["question"]).column("question")
    sample = sample.to_pylist()[: args.naive_sample]
    t2 = time.perf_counter()
    naive(sample, problems)
    naive_rate = len(sample) / (time.perf_counter() - t2)
    stage_rate = args.traces / stage_s
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"stage: {stage_rate:.0f} traces/s ({stage_s:.1f} s, {args.cpus} CPUs); naive: {naive_rate:.0f} traces/s "
          f"(1 process); ratio stage/naive = {stage_rate / naive_rate:.1f}")
    print(f"planted recall {recall:.4f} (goal 1.0), false positives {false_pos} (goal 0); "
          f"index {res.index['ngrams']} n-grams over {res.index['problems']} problems")
    print(f"driver peak RSS {peak_mb:.0f} MB")
    out = {"date": dt.date.today().isoformat(), "traces": args.traces, "cpus": args.cpus, "planted": len(planted),
           "stage_traces_per_s": stage_rate, "naive_traces_per_s": naive_rate, "ratio": stage_rate / naive_rate,
           "recall": recall, "false_positives": false_pos, "driver_peak_rss_mb": peak_mb, "index": res.index}
    if not args.no_save:
        path = ROOT / "benchmarks" / "results" / f"decontam-{dt.date.today().isoformat()}-{args.traces}.json"
        path.write_text(json.dumps(out, indent=2, default=str) + "\n")
        print(f"saved {path}")
    runtime.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
