"""Grade samples with lcb_runner's own grader (run by bench_grade.py in the lcb-runner venv).

    .bench-venv/lcb/bin/python benchmarks/lcb_runner_grade.py IN.json OUT.json --cpus 2 --timeout 6

IN.json: a list of {"input_output": <lcb_runner's JSON string: inputs, outputs, fn_name>, "code": str}.
OUT.json: {"wall_s": seconds inside codegen_metrics, "results": [[per-test result, ...], ...],
"metadata": [dict, ...]} in input order. Only the stdlib and livecodebench (`make lcb-runner-env`).
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("inp")
    ap.add_argument("out")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=6)
    args = ap.parse_args()
    from livecodebench.evaluation import codegen_metrics

    with open(args.inp) as f:
        items = json.load(f)
    samples = [{"input_output": it["input_output"]} for it in items]
    generations = [[it["code"]] for it in items]
    t0 = time.perf_counter()
    # its progress output stays on the real descriptors (its workers need a real stderr for faulthandler);
    # the caller discards it
    _, results, metadata = codegen_metrics(samples, generations, k_list=[1], num_process_evaluate=args.cpus,
                                           timeout=args.timeout)
    wall = time.perf_counter() - t0
    out = {"wall_s": wall,
           "results": [[r if isinstance(r, bool | int) else int(r) for r in results[i][0]] for i in range(len(items))],
           "metadata": [metadata[i][0] if isinstance(metadata[i], list) else metadata[i] for i in range(len(items))]}
    with open(args.out, "w") as f:
        json.dump(out, f, default=str)


if __name__ == "__main__":
    main()
