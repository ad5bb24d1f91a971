"""`run_experiment`: plan the study, run its graph across the cluster, report; finished stages are skipped.

Each stage is content-hashed and resumable on its own, so a killed study re-run with the same spec redoes only
what had not finished; a study whose nodes failed finishes everything else and then says what failed.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.live import Live
from rich.table import Table

from valley.errors import ValleyError
from valley.experiment import cost_ledger, nodes
from valley.experiment.executor import Outcome, StudyExecutor, default_limits
from valley.experiment.graph import StudyGraph, plan_study
from valley.experiment.spec import ExperimentSpec, load_spec
from valley.experiment.status import StudyStatus, status_rows
from valley.storage import Storage

console = Console(stderr=True)


class ExperimentResult(BaseModel):
    experiment: str
    runs: list[dict[str, Any]]
    report_dir: str
    report_md: str
    results: str
    plots: list[str]
    seconds: float
    limits: dict[str, int | None] = {}


class StudyFailed(ValleyError):
    """Some nodes failed; every node that did not depend on them finished."""


def _cluster_resources() -> dict[str, float]:
    try:
        import ray

        return dict(ray.cluster_resources()) if ray.is_initialized() else {}
    except Exception:  # noqa: BLE001 - limits fall back to one at a time per kind
        return {}


def failure_table(outcome: Outcome) -> str:
    lines = [f"{len(outcome.failed)} node(s) failed, {len(outcome.skipped)} skipped because of them:"]
    for node_id in outcome.failed:
        lines.append(f"  {node_id}: {outcome.errors.get(node_id, '?')}")
        if node_id in outcome.logs:
            lines.append(f"      traceback: {outcome.logs[node_id]}")
    lines.append("Re-run the same command to continue: finished stages are skipped. `valley report --partial` "
                 "renders what has finished.")
    return "\n".join(lines)


def _live_table(graph: StudyGraph, status: StudyStatus) -> Table:
    table = Table(title=f"study {graph.experiment}", expand=False)
    for col in ("node", "state", "elapsed", "why"):
        table.add_column(col)
    colors = {"running": "yellow", "done": "green", "failed": "red", "skipped": "magenta"}
    for row in status_rows(graph, status.records, time.time()):
        color = colors.get(row["state"], "white")
        table.add_row(row["node"], f"[{color}]{row['state']}[/{color}]", row["elapsed"], row["why"])
    table.caption = _resources_caption()
    return table


def _resources_caption() -> str:
    try:
        import ray

        if not ray.is_initialized():
            return ""
        total, free = ray.cluster_resources(), ray.available_resources()
        used = [f"{k} {total[k] - free.get(k, 0):g}/{total[k]:g}" for k in ("GPU", "CPU") if total.get(k)]
        return "in use: " + ", ".join(used)
    except Exception:  # noqa: BLE001 - the caption is decoration
        return ""


def execute(spec: ExperimentSpec, graph: StudyGraph, storage: Storage, live: bool | None = None,
            limits: dict[str, int | None] | None = None) -> Outcome:
    """Run every node of the graph (the report last), writing the study's status as it goes. `limits` replaces
    the spec's and the cluster's (benchmarks: `{"all": 1}` runs one node at a time, the sequential order)."""
    status = StudyStatus(storage, spec.experiment)
    status.start(graph, spec.model_dump(mode="json", exclude_unset=True))
    if limits is None:
        limits = default_limits(graph, _cluster_resources(), spec.max_concurrent.model_dump())
    console.log(f"[study] {len(graph.nodes)} nodes; at once at most: "
                + ", ".join(f"{k} {'unlimited' if v is None else v}" for k, v in limits.items()))

    def run(node: Any, inputs: Any, context: Any) -> dict[str, Any]:
        return nodes.run_node(spec, graph, node, storage, inputs, context)

    show = console.is_terminal if live is None else live
    executor = StudyExecutor(graph, run, limits, status)
    ledger = cost_ledger.CostLedger(storage, spec.experiment)  # stage timings for the report's cost table
    cost_ledger.activate(ledger)
    try:
        if show:
            with Live(_live_table(graph, status), console=console, refresh_per_second=1) as view:
                executor.on_change = lambda: view.update(_live_table(graph, status))
                outcome = executor.run()
        else:
            outcome = executor.run()
    except BaseException:
        status.driver("interrupted")
        raise
    finally:
        cost_ledger.activate(None)
    status.driver("failed" if outcome.failed else "finished")
    return outcome


def run_experiment(spec: ExperimentSpec, storage: Storage, live: bool | None = None) -> ExperimentResult:
    t0 = time.perf_counter()
    graph = plan_study(spec)
    outcome = execute(spec, graph, storage, live=live)
    if outcome.failed:
        raise StudyFailed(failure_table(outcome))
    report = outcome.outputs["report"]
    where = storage.uri  # full locations, so the user can open the report straight away
    return ExperimentResult(experiment=spec.experiment, runs=report["runs"], report_dir=where(report["stage_dir"]),
                            report_md=where(report["report_md"]), results=where(report["results"]),
                            plots=[where(p) for p in report["plots"]], seconds=round(time.perf_counter() - t0, 1),
                            limits=outcome.limits)


def run_experiment_file(path: str, overrides: list[str], storage_root: str) -> ExperimentResult:
    return run_experiment(load_spec(path, overrides), Storage(storage_root))
