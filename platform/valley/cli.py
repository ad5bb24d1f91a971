"""`valley <stage|run|demo|report>`: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any

from valley.errors import ValleyError

# stage name -> (module, config class, run function). Imported lazily so `valley --help` is instant
# and a CPU install never imports GPU-only packages.
STAGES: dict[str, tuple[str, str, str]] = {
    "data": ("valley.data.stage", "DataConfig", "run_data"),
    "label": ("valley.grade.label", "LabelConfig", "run_label"),
    "train": ("valley.train.stage", "TrainConfig", "run_train"),
    "generate": ("valley.generate.stage", "GenerateConfig", "run_generate"),
    "grade": ("valley.grade.stage", "GradeConfig", "run_grade"),
    "report": ("valley.report.stage", "ReportConfig", "run_report"),
}

DEFAULT_STORAGE = os.environ.get("VALLEY_STORAGE", "runs")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="storage root: a local dir or s3://bucket/prefix")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: RAY_ADDRESS or embedded)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for the embedded Ray (default: all)")
    p.add_argument("--verbose", action="store_true", help="show Ray's own logs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="valley", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for stage in STAGES:
        p = sub.add_parser(stage, help=f"run the {stage} stage from a YAML config")
        p.add_argument("config", nargs="?", help="YAML config file (fields of the stage's config)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, dots for nesting (repeatable)")
        _add_common(p)
        if stage == "report":
            p.add_argument("--partial", action="store_true", help="report whatever evaluations of a `valley run` "
                           "study have finished (no config: read from the study's storage)")
            p.add_argument("--experiment", default=None, help="with --partial: which study under --storage")
    p = sub.add_parser("run", help="run an experiment spec end to end (skips finished stages)")
    p.add_argument("spec")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--plan", action="store_true", help="print the study graph and the capacity plan first; stop "
                   "if a training run cannot fit its GPUs")
    p.add_argument("--dry-run", action="store_true", help="with --plan: stop after printing the plans")
    _add_common(p)
    from valley.capacity.command import add_plan_flags

    add_plan_flags(p)
    p = sub.add_parser("plan", help="memory per rank, tokens, FLOPs and GPU-hours of a spec, before running it")
    p.add_argument("spec")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="storage root holding data manifests / earlier samples")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    add_plan_flags(p)
    p = sub.add_parser("doctor", help="check this machine: sandbox, Ray, DeepSpeed, storage (and GPUs with --gpu)")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="storage root to check for writes")
    p.add_argument("--gpu", action="store_true", help="also run the GPU acceptance checks (CUDA, attention, "
                   "ZeRO-3 step, vLLM)")
    from valley.decontam.command import add_decontam_parser
    from valley.experiment.command import add_status_parser
    from valley.imports.command import add_import_parser

    add_import_parser(sub, _add_common)
    add_decontam_parser(sub, _add_common)
    add_status_parser(sub, lambda q: q.add_argument("--storage", default=DEFAULT_STORAGE,
                                                    help="storage root holding the study"))
    p = sub.add_parser("demo", help="write the synthetic demo corpus and problems and train the demo's base "
                       "student (offline, on the embedded local Ray)")
    p.add_argument("--out", default="demo-data", help="directory for the demo files")
    p.add_argument("--n-traces", type=int, default=2000)
    p.add_argument("--n-problems", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-instruct", action="store_true",
                   help="write the files and the random model only; skip the instruct stage (no student/)")
    p.add_argument("--instruct-rows", type=int, default=None, help="direct answers the instruct stage trains on")
    p.add_argument("--instruct-epochs", type=int, default=None)
    return parser


def run_stage_from_config(stage: str, cfg_path: str | None, overrides: list[str], storage_root: str) -> Any:
    from valley import config as config_mod
    from valley.storage import Storage

    module_name, cfg_name, fn_name = STAGES[stage]
    module = importlib.import_module(module_name)
    cfg = config_mod.load(getattr(module, cfg_name), cfg_path, overrides)
    return getattr(module, fn_name)(cfg, Storage(storage_root))


def _print_result(result: Any) -> None:
    if hasattr(result, "model_dump"):
        result = result.model_dump(mode="json")
    elif hasattr(result, "__dataclass_fields__"):
        import dataclasses

        result = dataclasses.asdict(result)
    print(json.dumps(result, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from valley import stderr_filter
            from valley.demo import InstructSettings, write_demo

            stderr_filter.install()

            chosen = {"rows": args.instruct_rows, "epochs": args.instruct_epochs, "seed": args.seed}
            instruct = None if args.no_instruct else InstructSettings(
                **{k: v for k, v in chosen.items() if v is not None})
            paths = write_demo(args.out, n_traces=args.n_traces, n_problems=args.n_problems, seed=args.seed,
                               instruct=instruct)
            _print_result(paths)
            return 0
        if args.command == "plan":
            from valley.capacity.command import plan_from_args, print_plan

            print_plan(plan_from_args(args), args, as_json=args.json)
            return 0
        if args.command == "doctor":
            from valley.doctor import main as doctor_main

            return doctor_main(storage_root=args.storage, gpu=args.gpu)
        if args.command == "status":
            from valley.experiment.command import status_main

            return status_main(args)
        if args.command == "run" and args.plan:
            from valley.capacity.command import plan_from_args, print_plan
            from valley.experiment import load_spec, plan_study
            from valley.experiment.command import print_graph

            spec = load_spec(args.spec, args.overrides)
            print_graph(plan_study(spec), spec.max_concurrent.model_dump())
            study_plan = plan_from_args(args)
            print_plan(study_plan, args)
            if not study_plan.all_fit:
                print("valley: error: a training run does not fit its GPUs (see the plan above)", file=sys.stderr)
                return 3
            if args.dry_run:
                return 0
        from valley import runtime, stderr_filter

        stderr_filter.install()  # before Ray starts: its C++ logger writes to fd 2 directly
        runtime.init(args.ray_address, num_cpus=args.num_cpus, quiet=not args.verbose)
        if args.command == "run":
            from valley.experiment import run_experiment_file

            result = run_experiment_file(args.spec, args.overrides, args.storage)
        elif args.command == "report" and args.partial:
            from valley.experiment.command import partial_report
            from valley.storage import Storage

            result = partial_report(Storage(args.storage), args.experiment)
        elif args.command in ("import", "decontam"):
            module = importlib.import_module(f"valley.{'imports' if args.command == 'import' else 'decontam'}.command")
            result = module.run_from_args(args)
        else:
            result = run_stage_from_config(args.command, args.config, args.overrides, args.storage)
        from valley.stage import located
        from valley.storage import Storage

        _print_result(located(result, Storage(args.storage)))  # results hold root-relative paths: show URIs
        if args.command == "run":
            from valley.report.summary import print_summary

            print_summary(result.results, {"report": result.report_md, "plots": result.plots})
        return 0
    except ValleyError as exc:
        print(f"valley: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
