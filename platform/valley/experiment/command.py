"""Command-line surface of the study: `valley run --plan` (the graph), `valley status`, `valley report --partial`."""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from valley.errors import ConfigError
from valley.experiment.graph import StudyGraph, plan_rows
from valley.experiment.status import counts, driver_gone, driver_state, experiments, read_study, status_rows
from valley.storage import Storage


def _console() -> Console:
    """Full-width tables when piped too (node ids are long; a log file has no 80-column limit)."""
    import sys

    return Console(width=None if sys.stdout.isatty() else 200)


def _table(title: str, rows: list[dict[str, str]]) -> Table:
    table = Table(title=title)
    for col in rows[0] if rows else ():
        table.add_column(col)
    for row in rows:
        table.add_row(*row.values())
    return table


def print_graph(graph: StudyGraph, limits: dict[str, Any]) -> None:
    """The study's nodes, what each waits for and what it holds while it runs."""
    console = _console()
    kinds = ", ".join(f"{graph.count(k)} {k}" for k in ("data", "label", "train", "generate", "grade", "report"))
    console.print(_table(f"study {graph.experiment}: {len(graph.nodes)} nodes ({kinds})", plan_rows(graph)))
    console.print("at once at most (max_concurrent; unset: what the cluster holds when the study starts): "
                  + ", ".join(f"{k} {'cluster' if v is None else v}" for k, v in limits.items()))


def design_rows(spec: Any, graph: StudyGraph, pools: dict[str, int]) -> list[dict[str, str]]:
    """One row per arm: its subset definition, eligible traces (from a finished data run, else "-"), sizes,
    starts and the training runs it expands to (per student)."""
    import json

    arms, _, _ = spec.design()
    rows = []
    for name, arm in arms.items():
        names = [arm.subset_name(name, size) for size in arm.sizes]
        found = [pools[n] for n in names if n in pools]
        trains = sum(1 for n in graph.nodes if n.kind == "train" and getattr(n.params, "arm", None) == name)
        rows.append({"arm": name, "subset": json.dumps(arm.subset, sort_keys=True) if arm.subset else "any trace",
                     "eligible": f"{max(found):,}" if found else "- (after the data stage)",
                     "sizes": ", ".join(f"{s:,}" for s in arm.sizes), "from": ", ".join(arm.starts()),
                     "seeds": ", ".join(str(arm.replicates(s, spec.seeds)) for s in arm.sizes)
                     + (" (resampled)" if arm.resample else ""),
                     "training runs": str(trains)})
    return rows


def print_design(spec: Any, graph: StudyGraph, storage_root: str | None) -> None:
    """`valley run --plan`: the arms (with their pools where a data run has counted them) and comparisons."""
    pools: dict[str, int] = {}
    if storage_root:
        from valley.capacity.estimate import manifest_subsets

        storage = Storage(storage_root, create=False)
        for student in spec.students:
            pools.update({n: s.eligible for n, s in manifest_subsets(storage, graph, student.name).items()
                          if s.eligible is not None})
    console = _console()
    console.print(_table(f"study {graph.experiment}: arms", design_rows(spec, graph, pools)))
    _, comparisons, evaluate_base = spec.design()
    for c in comparisons:
        what = f"series of {c.series}" if c.series else f"contrast {c.contrast[0]} vs {c.contrast[1]}"
        console.print(f"comparison {c.name!r}: {what}")
    console.print(f"base model evaluated: {'yes' if evaluate_base else 'no'}")


def add_status_parser(sub: Any, add_storage: Any) -> None:
    p = sub.add_parser("status", help="state of each node of a running or finished study, read from its storage")
    p.add_argument("storage_root", nargs="?", default=None, help="storage root (default: --storage)")
    p.add_argument("--experiment", default=None, help="which study (default: every study under the root)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    add_storage(p)


def status_main(args: argparse.Namespace) -> int:
    """Print each study's node table; exit 1 when a node failed, 0 otherwise."""
    import json

    storage = Storage(args.storage_root or args.storage)
    names = [args.experiment] if args.experiment else experiments(storage)
    if not names:
        raise ConfigError(f"no study under {storage.uri()} (looked for experiments/*/study/graph.json)")
    console, now, any_failed, out = _console(), time.time(), False, {}
    for name in names:
        try:
            graph, records, driver = read_study(storage, name)
        except FileNotFoundError as exc:
            raise ConfigError(str(exc)) from exc
        state = driver_state(driver, now)
        rows = status_rows(graph, records, now, driver_is_gone=driver_gone(state))
        tally = counts({"state": r["state"]} for r in rows)
        any_failed |= tally.get("failed", 0) > 0
        if args.json:
            out[name] = {"driver": state, "counts": tally, "nodes": rows}
            continue
        summary = ", ".join(f"{v} {k}" for k, v in tally.items() if v)
        console.print(_table(f"{name}: driver {state} on {driver.get('host', '?')}; {summary}", rows))
    if args.json:
        print(json.dumps(out, indent=2))
    return 1 if any_failed else 0


def partial_report(storage: Storage, experiment: str | None) -> dict[str, Any]:
    """A report over whatever evaluations of a study have finished, as its own report run (`<experiment>-partial`)."""
    from valley.experiment import nodes
    from valley.experiment.spec import ExperimentSpec
    from valley.experiment.status import finished_outputs

    names = [experiment] if experiment else experiments(storage)
    if len(names) != 1:
        raise ConfigError(f"name the study with --experiment (found {names or 'none'} under {storage.uri()})")
    graph, records, _ = read_study(storage, names[0])
    spec = ExperimentSpec.model_validate(storage.read_json("experiments", names[0], "study", "spec.json"))
    outputs = finished_outputs(records)
    if not nodes.graded_outputs(graph, outputs):
        raise ConfigError(f"no evaluation of {names[0]} has finished grading yet; nothing to report")
    return nodes.report_over(spec, graph, storage, outputs, name=f"{names[0]}-partial")
