"""`valley import FILE... --problems LCB...`: arguments -> ImportConfig -> run (and score with --score).

Kept apart from cli.py so the CLI only registers the sub-command; nothing heavy is imported until it runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_parser(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("import", help="turn existing generations (lcb_runner, SkyThought, JSONL) into a samples table")
    p.add_argument("files", nargs="+", help="lcb_runner *_eval_all.json / generations .json, SkyThought results.json, "
                                            "or JSONL (question_id, response, ...); .gz ok; one run per file")
    p.add_argument("--problems", nargs="+", default=[], metavar="LCB_FILE",
                   help="LCB problem files whose tests grade the samples (needed for --score)")
    p.add_argument("--format", default="auto", choices=["auto", "lcb", "skythought", "jsonl"])
    p.add_argument("--model", dest="models", action="append", default=[],
                   help="run label, once per file in order (default: from the file name)")
    p.add_argument("--temperature", default=None, help="SkyThought files holding several temperatures: which one")
    p.add_argument("--response-from", default="output", choices=["output", "code"],
                   help="lcb_runner: import raw outputs (default) or its extracted code")
    p.add_argument("--problem-sample", type=int, default=None, help="import this many problems per file (seeded)")
    p.add_argument("--name", default="default", help="name of the import (and of its grade/report with --score)")
    p.add_argument("--score", action="store_true", help="then grade the samples and write the report")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override an ImportConfig field (dots for nesting)")
    p.add_argument("--grade-set", dest="grade_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="with --score: a GradeConfig field, e.g. timeout_s=6")
    p.add_argument("--report-set", dest="report_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="with --score: a ReportConfig field, e.g. n_boot=200")
    add_common(p)


def config_from_args(args: argparse.Namespace) -> Any:
    from valley import config as config_mod
    from valley.errors import ConfigError
    from valley.imports.config import ImportConfig

    if args.models and len(args.models) != len(args.files):
        raise ConfigError(f"--model given {len(args.models)} times for {len(args.files)} files; give one per file")
    inputs = [{"path": f, "format": args.format, "temperature": args.temperature,
               **({"model": args.models[i]} if args.models else {})} for i, f in enumerate(args.files)]
    data = {"name": args.name, "inputs": inputs, "problems": args.problems, "response_from": args.response_from,
            "problem_sample": args.problem_sample}
    return config_mod.build(ImportConfig, config_mod.apply_overrides(data, args.overrides), source="valley import")


def run_from_args(args: argparse.Namespace) -> Any:
    from valley import config as config_mod
    from valley.storage import Storage

    cfg = config_from_args(args)
    storage = Storage(args.storage)
    if not args.score:
        from valley.imports.stage import run_import

        return run_import(cfg, storage)
    from valley.imports.score import score_import

    grade = config_mod.apply_overrides({}, args.grade_overrides)
    report = config_mod.apply_overrides({}, args.report_overrides)
    return score_import(cfg, storage, grade=grade, report=report)
