"""Import benchmark: all six lcb_runner `*_eval_all` files (shared/data/lcb_verdicts) imported, graded on
the LCB public tests (shared/data/lcb) and reported with the official verdicts beside ours.

Printed, from one run:
1. per model: problems, samples, official pass@1 and ours on the same problems (public tests only),
   the agreement table (both pass / both fail / official pass & ours fail / official fail & ours pass,
   of which the official failing test was public);
2. ratios: official passes that pass here (goal 1.0: the public tests are a subset of the official
   ones), and our pass@1 / official pass@1 per model (>= 1 expected: fewer tests);
3. wall time of import, grade and report, and samples graded per second.

Full measurement (quiet machine; grading 4944 samples is CPU heavy, about 1 s of CPU per sample):
    .venv/bin/python benchmarks/bench_import.py --cpus 2
Quick check: --problems-per-file 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "platform"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # embedded cluster: no token (as the other benchmarks)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems-per-file", type=int, default=None, help="seeded sample of problems per file")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--timeout-s", type=float, default=6.0, help="per-test limit (LCB: 6 s)")
    ap.add_argument("--storage", default=None, help="storage root (default: a temporary directory)")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    if not (SHARED / "lcb_verdicts").exists():
        print(f"shared data not found at {SHARED}")
        return 1

    import polars as pl

    from valley import runtime
    from valley.grade.config import GradeConfig
    from valley.grade.stage import run_grade
    from valley.imports.config import ImportConfig, ImportInput
    from valley.imports.score import report_config
    from valley.imports.stage import run_import
    from valley.report.stage import run_report
    from valley.storage import Storage

    runtime.init(num_cpus=args.cpus)
    files = sorted((SHARED / "lcb_verdicts").glob("*_eval_all.json.gz"))
    problems = [str(p) for p in sorted((SHARED / "lcb").glob("*.jsonl"))]
    root = args.storage or tempfile.mkdtemp(prefix="bench-import-")
    storage = Storage(root)
    cfg = ImportConfig(name="bench", inputs=[ImportInput(path=str(f)) for f in files], problems=problems,
                       problem_sample=args.problems_per_file)
    t0 = time.perf_counter()
    imported = run_import(cfg, storage)
    t1 = time.perf_counter()
    graded = run_grade(GradeConfig(name="bench", samples=imported.samples, problems=imported.problems,
                                   timeout_s=args.timeout_s), storage)
    t2 = time.perf_counter()
    report = run_report(report_config(imported, graded.verdicts_dir, name="bench", experiment="bench import",
                                      n_boot=200), storage)
    t3 = time.perf_counter()

    results = pl.read_parquet(storage.path(report.results))
    per_model = {}
    for run in imported.runs:
        rows = {r["metric"]: r["value"] for r in results.filter(pl.col("run_id") == run["run_id"]).iter_rows(named=True)}
        m = {k.removeprefix("official/"): rows[k] for k in rows if k.startswith("official/")}
        m.update(problems=run["n_problems"], samples=run["n_samples"], extraction_differs=run["extraction_differs"])
        official_pass = m["both_pass"] + m["official_pass_ours_fail"]
        m["official_passes_kept"] = m["both_pass"] / official_pass if official_pass else None
        m["ours_over_official"] = m["our_pass@1"] / m["official_pass@1"] if m["official_pass@1"] else None
        per_model[run["run_id"]] = m
    header = f"{'model':32} {'probs':>5} {'samples':>7} {'official':>8} {'ours':>6} {'both+':>6} {'both-':>6} " \
             f"{'off+us-':>7} {'off-us+':>7} {'(pub)':>5} {'kept':>6}"
    print(header)
    for name, m in per_model.items():
        kept = "–" if m["official_passes_kept"] is None else f"{m['official_passes_kept']:.3f}"
        print(f"{name:32} {m['problems']:5d} {m['samples']:7d} {100 * m['official_pass@1']:8.1f} "
              f"{100 * m['our_pass@1']:6.1f} {m['both_pass']:6.0f} {m['both_fail']:6.0f} "
              f"{m['official_pass_ours_fail']:7.0f} {m['official_fail_ours_pass']:7.0f} "
              f"{m['official_fail_ours_pass_public_test']:5.0f} {kept:>6}")
    n = imported.n_samples
    passes = sum(m["both_pass"] + m["official_pass_ours_fail"] for m in per_model.values())
    kept_all = sum(m["both_pass"] for m in per_model.values()) / passes if passes else float("nan")
    print(f"\nratio official passes that pass here: {kept_all:.4f} (goal 1.0)")
    print(f"wall: import {t1 - t0:.1f} s, grade {t2 - t1:.1f} s ({n / (t2 - t1):.2f} samples/s on {args.cpus} CPUs), "
          f"report {t3 - t2:.1f} s; total {t3 - t0:.1f} s")
    print(f"report: {storage.uri(report.report_md)}")
    out = {"date": dt.date.today().isoformat(), "cpus": args.cpus, "problems_per_file": args.problems_per_file,
           "samples": n, "official_passes_kept": kept_all, "seconds": {"import": t1 - t0, "grade": t2 - t1,
                                                                      "report": t3 - t2},
           "grade_counts": graded.counts, "models": per_model}
    if not args.no_save:
        suffix = "full" if args.problems_per_file is None else f"p{args.problems_per_file}"
        path = ROOT / "benchmarks" / "results" / f"import-{dt.date.today().isoformat()}-{suffix}.json"
        path.write_text(json.dumps(out, indent=2, default=str) + "\n")
        print(f"saved {path}")
    runtime.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
