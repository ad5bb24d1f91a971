"""The `valley plan` command-line surface (also used by `valley run --plan`): flags in, plan out."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from valley.capacity.assumptions import Assumptions

if TYPE_CHECKING:
    from valley.capacity.estimate import StudyEstimate


def add_plan_flags(p: argparse.ArgumentParser) -> None:
    """Cluster and assumption flags shared by `valley plan` and `valley run --plan`."""
    d = Assumptions()
    p.add_argument("--cluster", default=None, help="Ray cluster file with the GPU node type (default: ./ray_cluster.yaml)")
    p.add_argument("--gpus-per-node", type=int, default=None, help="override the cluster file's GPUs per node")
    p.add_argument("--nodes", type=int, default=None, help="GPU nodes to predict the study's wall-clock on (default: "
                   "the cluster file's max_workers of its GPU node type; given, they are taken to be up at launch)")
    p.add_argument("--gpu-mem", type=float, default=None, help="GiB of memory per GPU (override)")
    p.add_argument("--gpu-name", default=None, help="device for the bf16 peak, e.g. H100, H200, A100")
    p.add_argument("--mfu", type=float, default=d.mfu, help=f"assumed model FLOPs utilisation (default {d.mfu})")
    p.add_argument("--gen-tokens-per-s", type=float, default=d.gen_tokens_per_s,
                   help=f"assumed generated tokens/s per GPU (default {d.gen_tokens_per_s:g})")
    p.add_argument("--tokens-per-trace", type=float, default=d.tokens_per_trace,
                   help="assumed tokens per trace when no manifest or corpus sample is readable")
    p.add_argument("--problems", type=int, default=None, help="LCB problems per evaluation (default: counted)")
    p.add_argument("--plan-json", default=None, metavar="PATH", help="also write the plan as JSON here")
    p.add_argument("--base-pass", type=float, default=None, metavar="RATE",
                   help="the base model's pass@1 for the power table, e.g. 0.25 (default: the assumption in "
                        "valley/metrics/power.py)")
    p.add_argument("--detect", type=float, default=None, metavar="POINTS",
                   help="also print what design detects a pass@1 difference of this many points at 80%% power")


def plan_from_args(args: argparse.Namespace) -> StudyEstimate:
    from valley.capacity.cluster import resolve_node
    from valley.capacity.estimate import estimate_spec_file

    node = resolve_node(args.cluster, args.gpus_per_node, args.gpu_mem, args.gpu_name, args.nodes)
    assumptions = Assumptions(mfu=args.mfu, gen_tokens_per_s=args.gen_tokens_per_s,
                              tokens_per_trace=args.tokens_per_trace, problems=args.problems)
    return estimate_spec_file(args.spec, args.overrides, node=node, assumptions=assumptions,
                          storage_root=getattr(args, "storage", None))


def print_plan(plan: StudyEstimate, args: argparse.Namespace, as_json: bool = False) -> None:
    """The capacity plan and the power table: as text, or both in one JSON object (also to --plan-json)."""
    from dataclasses import asdict

    from valley.capacity import power_table
    from valley.capacity.render import render_plan

    rows, assumptions, detect = power_rows_of(plan, args)
    data = {**plan.as_dict(), "power": {"assumptions": asdict(assumptions), "detect": detect,
                                        "comparisons": [asdict(r) for r in rows]}}
    if args.plan_json:
        Path(args.plan_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.plan_json).write_text(json.dumps(data, indent=2) + "\n")
    if as_json:
        print(json.dumps(data, indent=2), flush=True)
    else:
        print(render_plan(plan), flush=True)
        print(power_table.render(rows, assumptions, detect), flush=True)


def power_rows_of(plan: StudyEstimate, args: argparse.Namespace) -> tuple[list[Any], Any, float | None]:
    """The power table's rows for the spec's comparisons, the assumptions and the `--detect` target."""
    from dataclasses import replace

    from valley.capacity import power_table
    from valley.experiment import load_spec, plan_study
    from valley.metrics import power

    spec = load_spec(args.spec, args.overrides)
    problems = plan.evaluate[0].problems if plan.evaluate else (args.problems or 0)
    assumptions = power.Assumptions()
    if getattr(args, "base_pass", None) is not None:
        assumptions = replace(assumptions, base_pass=args.base_pass)
    detect = args.detect / 100 if getattr(args, "detect", None) is not None else None
    return power_table.power_rows(spec, plan_study(spec), problems, assumptions, detect), assumptions, detect
