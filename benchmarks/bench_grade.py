"""Grade stage benchmark on real model outputs (shared/data/lcb_verdicts) and LCB public tests,
against lcb_runner's own grader on the same samples and cores.

Printed, all measured in one run on the same samples:
1. samples/s of the grade stage (bubblewrap sandbox on) and of lcb_runner's `codegen_metrics`
   (same cores as processes, 6 s timeout), and the ratio ours / lcb_runner (goal >= 1.5);
2. wall / (test CPU / cores): wall time over the ideal, the summed CPU time of the programs
   themselves divided by the cores (goal <= 1.3): what start-up, isolation, Ray and I/O cost;
3. agreement on the public tests, ours vs lcb_runner now vs the official verdicts; every sample we
   pass and lcb_runner fails is labelled with the idiom lcb_runner mishandles (valley.grade.lcb_diff:
   known, intended differences) or "unexplained";
4. the failing-test re-check: officially failed samples must fail here on the test lcb_runner failed
   them on (possibly private, logged in its metadata).

Setup (once):  make lcb-runner-env   (lcb_runner's evaluation code from PyPI, in .bench-venv/lcb)
Full measurement (quiet machine, 2 cores; three interleaved rounds, the median ratio):
    .venv/bin/python benchmarks/bench_grade.py --samples 1000 --seed 1 --cpus 2 --repeat 3
Without lcb_runner: --no-lcb. Plain subprocess runner (sandbox off) beside it: --plain.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import gzip
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
LCB_PYTHON = ROOT / ".bench-venv" / "lcb" / "bin" / "python"
CODE_VERDICT = {-2: "wrong_answer", -3: "time_limit", -4: "runtime_error"}


def load_records(seed: int, n: int) -> list[dict]:
    """n random (model output, official verdict) records over all six lcb_verdicts files."""
    recs = []
    for f in sorted((SHARED / "lcb_verdicts").glob("*.json.gz")):
        run = f.name.split("__Scenario")[0]
        with gzip.open(f, "rt") as fh:
            for r in json.load(fh):
                for i, (out, ok, meta) in enumerate(zip(r["output_list"], r["graded_list"], r["metadata"])):
                    recs.append({"run_id": run, "question_id": r["question_id"], "sample_idx": i, "response": out,
                                 "official": bool(ok), "meta": json.loads(meta), "code": r["code_list"][i]})
    random.Random(seed).shuffle(recs)
    return recs[:n]


def key(r: dict) -> str:
    return f"{r['run_id']}|{r['question_id']}|{r['sample_idx']}"


def grade(storage, name: str, sandbox: str, samples: str, problems: str, args, per_test: bool = False):
    from valley.grade.config import GradeConfig
    from valley.grade.stage import run_grade

    cfg = GradeConfig(name=name, samples=samples, problems=problems, sandbox=sandbox, per_test_rows=per_test,
                      batch_size=args.batch_size, timeout_s=args.timeout)
    t0 = time.perf_counter()
    res = run_grade(cfg, storage)
    wall = time.perf_counter() - t0
    return res, wall, storage.read_parquet(res.verdicts_dir).to_pylist()


def run_lcb_runner(recs: list[dict], problems: dict, args) -> dict:
    """lcb_runner's codegen_metrics on the same samples (its own extracted code), in its own venv."""
    items = []
    for r in recs:
        p = problems[r["question_id"]]
        tests = json.loads(p["tests"])
        io = {"inputs": [t["input"] for t in tests], "outputs": [t["output"] for t in tests],
              "fn_name": p["func_name"] if p["testtype"] == "functional" else None}
        items.append({"input_output": json.dumps(io), "code": r["code"]})
    with tempfile.TemporaryDirectory(prefix="bench-lcb-") as tmp:
        inp, out = Path(tmp, "in.json"), Path(tmp, "out.json")
        inp.write_text(json.dumps(items))
        with open(Path(tmp, "log.txt"), "w") as log:
            proc = subprocess.run([str(LCB_PYTHON), str(Path(__file__).with_name("lcb_runner_grade.py")), str(inp),
                                   str(out), "--cpus", str(args.cpus), "--timeout", str(int(args.timeout))],
                                  stdout=log, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            sys.exit(f"lcb_runner failed: {Path(tmp, 'log.txt').read_text()[-3000:]}")
        res = json.loads(out.read_text())
    res["passed"] = [bool(rs) and all(x is True or x == 1 for x in rs) for rs in res["results"]]
    return res


def agreement_table(recs: list[dict], ours: dict[str, dict], lcb: dict | None) -> dict:
    """Per-sample comparison on the public tests; disagreements labelled by idiom."""
    from valley.grade.lcb_diff import lcb_failing_idioms

    table: Counter[str] = Counter()
    known: Counter[str] = Counter()
    unexplained = []
    for i, r in enumerate(recs):
        v = ours.get(key(r))
        if v is None:
            continue
        we = v["verdict"] == "pass"
        table[f"official_{'pass' if r['official'] else 'fail'}/ours_{'pass' if we else 'fail'}"] += 1
        if lcb is None:
            continue
        they = lcb["passed"][i]
        table[f"lcb_now_{'pass' if they else 'fail'}/ours_{'pass' if we else 'fail'}"] += 1
        if we == they:
            continue
        stdin = lcb_failing_idioms(r["code"])
        if we and stdin:
            for idiom in stdin:
                known[idiom] += 1
            continue
        first = json.loads(v["first_failure"] or "{}")
        unexplained.append({"sample": key(r), "ours": v["verdict"], "lcb_now_pass": they, "official": r["official"],
                            "our_error": (first.get("error") or "")[:160],
                            "lcb_error": str(lcb["metadata"][i])[:160]})
    return {"counts": dict(sorted(table.items())), "intended_differences_by_idiom": dict(known.most_common()),
            "unexplained": unexplained}


def failing_test_recheck(storage, recs: list[dict], problems_by_id: dict, args) -> dict:
    """Officially failed samples re-graded on the test lcb_runner failed them on."""
    from valley import schemas

    fail_probs, fail_samples = [], []
    for r in recs:
        m = r["meta"]
        if r["official"] or m.get("error_code") not in CODE_VERDICT or "inputs" not in m:
            continue
        if "(truncated)" in m["inputs"] + m["expected"]:
            continue
        p = problems_by_id[r["question_id"]]
        if p["testtype"] == "functional":
            try:  # lcb_runner logs str() of the parsed arguments and of the expected value
                args_list, expected = ast.literal_eval(m["inputs"]), ast.literal_eval(m["expected"])
                test = {"input": "\n".join(json.dumps(a) for a in args_list), "output": json.dumps(expected),
                        "testtype": "functional"}
            except (ValueError, SyntaxError, TypeError):
                continue
        else:
            test = {"input": m["inputs"], "output": m["expected"], "testtype": "stdin"}
        qid = f"{r['question_id']}#{r['run_id']}#{r['sample_idx']}"
        fail_probs.append({**p, "question_id": qid, "tests": json.dumps([test])})
        fail_samples.append({**r, "question_id": qid, "expected_verdict": CODE_VERDICT[m["error_code"]]})
    if not fail_samples:
        return {}
    storage.write_parquet(pa.Table.from_pylist(fail_probs, schema=schemas.PROBLEMS), "fail_problems.parquet")
    storage.write_parquet(pa.Table.from_pylist(fail_samples, schema=schemas.SAMPLES), "fail_samples",
                          "part-0.parquet", schema=schemas.SAMPLES)
    _, _, fverdicts = grade(storage, "failing-tests", "bwrap", "fail_samples", "fail_problems.parquet", args)
    from valley.grade.lcb_diff import lcb_failing_idioms

    expect = {f"{s['run_id']}|{s['question_id']}|{s['sample_idx']}": s for s in fail_samples}
    fv = {f"{v['run_id']}|{v['question_id']}|{v['sample_idx']}": v["verdict"] for v in fverdicts}
    kinds = Counter((expect[k]["expected_verdict"], v) for k, v in fv.items())
    passed_known = Counter(i for k, v in fv.items() if v == "pass" for i in lcb_failing_idioms(expect[k]["code"]))
    return {
        "rechecked": len(fv),
        "we_fail": sum(v != "pass" for v in fv.values()),
        "we_pass_known_idiom": sum(v == "pass" and bool(lcb_failing_idioms(expect[k]["code"])) for k, v in fv.items()),
        "we_pass_known_idiom_by_idiom": dict(passed_known),
        "same_verdict_kind": sum(expect[k]["expected_verdict"] == v for k, v in fv.items()),
        "verdict_pairs(official,ours)": {f"{a},{b}": n for (a, b), n in sorted(kinds.items())},
    }


def _median_run(runs: list[dict]) -> dict:
    """The run of median wall time (the upper one of two middles), reported whole."""
    return sorted(runs, key=lambda x: x["wall_s"])[len(runs) // 2]


def _timed_run(storage, name: str, mode: str, args) -> tuple[dict, dict[str, dict]]:
    """One timed grade of every sample; the summary and the verdicts by sample key."""
    res, wall, verdicts = grade(storage, name, mode, "samples", "problems.parquet", args)
    cpu = sum(v["cpu_s"] or 0.0 for v in verdicts)
    summary = {"wall_s": round(wall, 2), "samples_per_s": round(len(verdicts) / wall, 2),
               "tests": sum((v["passed_tests"] or 0) + (v["verdict"] not in ("pass", "no_code", "syntax_error"))
                            for v in verdicts),
               "test_cpu_s": round(cpu, 2), "ideal_wall_s": round(cpu / args.cpus, 2),
               "wall_over_ideal": round(wall / max(cpu / args.cpus, 1e-9), 3),
               "time_limit_test_cpu_s": round(sum(v["cpu_s"] or 0.0 for v in verdicts if v["verdict"] == "time_limit"),
                                              2),
               "reruns_alone": res.reruns_alone, "grader_errors": res.grader_errors, "counts": res.counts}
    return summary, {key(v): v for v in verdicts}


def main() -> None:
    from valley.grade.config import GradeConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    ap.add_argument("--batch-size", type=int, default=GradeConfig.model_fields["batch_size"].default,
                    help="samples per Ray task (default: the grade stage's)")
    ap.add_argument("--timeout", type=float, default=6.0)
    ap.add_argument("--repeat", type=int, default=1,
                    help="interleaved runs (lcb_runner, then ours) per grader; the ratio is the median")
    ap.add_argument("--no-lcb", action="store_true", help="skip lcb_runner (no .bench-venv/lcb)")
    ap.add_argument("--plain", action="store_true", help="also time sandbox=rlimit_only")
    ap.add_argument("--no-recheck", action="store_true", help="skip the failing-test re-check")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / f"grade-{dt.date.today()}.json"))
    args = ap.parse_args()
    if not (SHARED / "lcb_verdicts").exists():
        sys.exit(f"shared data not found at {SHARED}")
    if not args.no_lcb and not LCB_PYTHON.exists():
        sys.exit(f"{LCB_PYTHON} missing: run `make lcb-runner-env` (or pass --no-lcb)")

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from valley import runtime, schemas
    from valley.grade.sandbox_env import DEFAULT_PACKAGES, ensure_env
    from valley.problems import load_lcb_problems
    from valley.storage import Storage

    ensure_env(DEFAULT_PACKAGES)  # built before timing
    problems = load_lcb_problems(sorted((SHARED / "lcb").glob("*.jsonl")))
    by_id = {r["question_id"]: r for r in problems.to_pylist()}
    recs = load_records(args.seed, args.samples)
    storage = Storage(tempfile.mkdtemp(prefix="bench-grade-"))
    storage.write_parquet(problems, "problems.parquet")
    storage.write_parquet(pa.Table.from_pylist(recs, schema=schemas.SAMPLES), "samples", "part-0.parquet",
                          schema=schemas.SAMPLES)
    report: dict = {"samples": len(recs), "seed": args.seed, "cpus": args.cpus, "timeout_s": args.timeout,
                    "batch_size": args.batch_size, "repeat": args.repeat, "machine_cores": os.cpu_count(),
                    "load_avg_1m_at_start": round(os.getloadavg()[0], 1)}

    # lcb_runner runs while Ray is down (its idle daemons would share the cores), so Ray starts per round
    lcb, lcb_runs, ours_runs, runs, verdict_sets = None, [], [], {}, []
    for r in range(args.repeat):
        if not args.no_lcb:
            lcb = run_lcb_runner(recs, by_id, args)
            lcb_runs.append({"wall_s": round(lcb["wall_s"], 2), "samples_per_s": round(len(recs) / lcb["wall_s"], 2),
                             "passed": sum(lcb["passed"])})
        runtime.init(num_cpus=args.cpus)
        summary, runs["bwrap"] = _timed_run(storage, f"bwrap-{r}", "bwrap", args)
        ours_runs.append(summary)
        verdict_sets.append({k: v["verdict"] for k, v in runs["bwrap"].items()})
        if args.plain and r == 0:
            report["rlimit_only"], runs["rlimit_only"] = _timed_run(storage, "rlimit_only", "rlimit_only", args)
        if r < args.repeat - 1:
            runtime.shutdown()
    report["bwrap"] = {**_median_run(ours_runs), "runs_wall_s": [x["wall_s"] for x in ours_runs]}
    b = report["bwrap"]
    b["verdicts_identical_across_runs"] = all(v == verdict_sets[0] for v in verdict_sets)
    if lcb_runs:
        report["lcb_runner"] = {**_median_run(lcb_runs),
                                "processes": args.cpus, "runs_wall_s": [x["wall_s"] for x in lcb_runs]}
        ratios = [o["samples_per_s"] / x["samples_per_s"] for o, x in zip(ours_runs, lcb_runs)]
        report["ours_over_lcb_runner_samples_per_s_runs"] = [round(x, 3) for x in ratios]
        report["ours_over_lcb_runner_samples_per_s"] = round(statistics.median(ratios), 3)
        # The best ratio any grader with the same CPU-time limit could reach: the programs' own CPU time
        # (a time-limit sample burns the whole limit) spread perfectly over the cores, zero overhead.
        bounds = [x["wall_s"] / max(o["ideal_wall_s"], 1e-9) for o, x in zip(ours_runs, lcb_runs)]
        report["ratio_bound_at_zero_overhead"] = round(statistics.median(bounds), 3)
        report["share_of_bound"] = round(statistics.median([r / bd for r, bd in zip(ratios, bounds)]), 3)
    if args.plain:
        report["sandbox_vs_plain_samples_per_s"] = round(b["samples_per_s"] / report["rlimit_only"]["samples_per_s"], 3)
    report["agreement_public_tests"] = agreement_table(recs, runs["bwrap"], lcb)
    if not args.no_recheck:
        report["failing_test_recheck"] = failing_test_recheck(storage, recs, by_id, args)

    print(json.dumps(report, indent=2))
    print()
    if lcb_runs:
        print(f"samples/s: ours (sandbox on) {b['samples_per_s']} vs lcb_runner {report['lcb_runner']['samples_per_s']}"
              f" -> ratio {report['ours_over_lcb_runner_samples_per_s']} (median of {args.repeat}; goal >= 1.5); "
              f"bound at zero overhead {report['ratio_bound_at_zero_overhead']}, reached "
              f"{report['share_of_bound']:.0%} of it; {b['time_limit_test_cpu_s']} s of the {b['test_cpu_s']} s test CPU "
              "is time-limit samples")
    print(f"wall / (test CPU / {args.cpus} cores): {b['wall_over_ideal']} (goal <= 1.3); "
          f"re-runs alone {b['reruns_alone']}, grader errors {b['grader_errors']}")
    ag = report["agreement_public_tests"]
    print(f"agreement counts: {ag['counts']}")
    print(f"intended differences (we pass, lcb_runner fails, by idiom): {ag['intended_differences_by_idiom']}")
    print(f"unexplained disagreements: {len(ag['unexplained'])}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    runtime.shutdown()


if __name__ == "__main__":
    sys.exit(main())
