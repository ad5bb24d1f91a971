"""`valley verify <storage> [--repair]`: every finished stage run under a root checked against its marker's
file list (valley/integrity.py), the damaged ones named file by file, with the runs that must be redone.

A damaged run is redone from what is still intact: `--repair` moves its damaged files aside and removes
its marker, and the stage resumes (generation per part, grading per batch, training from its checkpoint).
A run that consumed a damaged run (found through the studies' graphs) is redone whole: its inputs may
come back different (a retrained model, a regenerated sample on a GPU), so `--repair` moves all its
files aside and removes its marker. Nothing is deleted: everything moved goes to
`_set_aside/<time>/<stage dir>/` under the root, and the next `valley run` redoes exactly these runs.
"""

from __future__ import annotations

import argparse
import json
import posixpath
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from valley import registry
from valley.integrity import Damage
from valley.storage import SUCCESS, Storage

__all__ = ["RunCheck", "add_verify_parser", "check_storage", "dependents", "repair", "runs_to_redo", "verify_main"]

SET_ASIDE = "_set_aside"


@dataclass
class RunCheck:
    """One finished stage run: `ok`, `damaged` (with its files), or `unchecked` (a marker without a file list)."""

    stage_dir: str
    state: str
    damage: list[Damage] = field(default_factory=list)
    files: int = 0


def finished_runs(storage: Storage) -> list[str]:
    """Root-relative directories of every stage run with a marker, stage by stage in the registry's order."""
    runs = []
    for stage in registry.STAGES:
        for entry in storage.list_dirs(stage):
            if storage.exists(stage, entry, SUCCESS):
                runs.append(f"{stage}/{entry}")
    return runs


def check_storage(storage: Storage, *, hashes: bool = True) -> list[RunCheck]:
    """Every finished run's files against its marker: sizes always, contents with `hashes`."""
    checks = []
    for run in finished_runs(storage):
        marker = storage.read_json(run, SUCCESS)
        damage = storage.damaged_files(run, hashes=hashes, marker=marker)
        if damage is None:
            checks.append(RunCheck(run, "unchecked"))
            continue
        checks.append(RunCheck(run, "damaged" if damage else "ok", damage, len(marker["files"])))
    return checks


def dependents(storage: Storage) -> dict[str, set[str]]:
    """Stage dir -> stage dirs of the runs that read it directly, from every study's lineage under the root,
    and, for studies run before lineage was kept, from their graphs and last node records. Runs made outside
    a study have no recorded consumers."""
    from valley.experiment.status import experiments, read_lineage, read_study, stage_dir_of

    edges: dict[str, set[str]] = {}
    for experiment in experiments(storage):
        parts = ("experiments", experiment, "study")
        for made, read in read_lineage(storage, *parts).items():
            for producer in read:
                edges.setdefault(producer, set()).add(made)
        try:
            graph, records, _ = read_study(storage, experiment)
        except (FileNotFoundError, KeyError, ValueError):
            continue
        for node in graph.nodes:
            consumer = stage_dir_of(records.get(node.id, {}))
            for producer in (stage_dir_of(records.get(dep, {})) for dep in node.deps):
                if producer and consumer:
                    edges.setdefault(producer, set()).add(consumer)
    return edges


def runs_to_redo(damaged: Iterable[str], edges: Mapping[str, set[str]]) -> dict[str, str]:
    """Every run to redo and why: the damaged runs themselves, then everything downstream of them."""
    redo = {run: "damaged" for run in damaged}
    frontier = deque(redo)  # breadth first: each run is named with its nearest damaged ancestor
    while frontier:
        run = frontier.popleft()
        for consumer in sorted(edges.get(run, ())):
            if consumer not in redo:
                redo[consumer] = f"reads {run}"
                frontier.append(consumer)
    return redo


def repair(storage: Storage, checks: list[RunCheck], redo: Mapping[str, str]) -> list[str]:
    """Move damaged files (of damaged runs) or whole outputs (of their consumers) aside under
    `_set_aside/<time>/`, and remove those runs' markers; returns what was done, a line per action."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    damage_of = {c.stage_dir: c.damage for c in checks}
    actions = []
    for run, why in redo.items():
        if not storage.exists(run, SUCCESS):
            continue
        storage.remove(run, SUCCESS)  # first: a kill from here on leaves a run that is redone, never trusted
        moved = ([d.path for d in damage_of.get(run, []) if d.problem != "missing"] if why == "damaged"
                 else [posixpath.relpath(i.path, storage.path(run)) for i in storage.stage_files(run)])
        for rel in moved:
            storage.move((run, rel), (SET_ASIDE, stamp, run, rel))
        where = storage.uri(SET_ASIDE, stamp, run)
        actions.append(f"{run}: marker removed ({why}); {len(moved)} file(s) moved to {where}" if moved
                       else f"{run}: marker removed ({why})")
    return actions


def add_verify_parser(sub: Any, default_storage: str) -> None:
    p = sub.add_parser("verify", help="check every finished stage run's files against its marker; "
                       "--repair makes the next run redo the damaged runs and what read them")
    p.add_argument("storage", nargs="?", default=default_storage, help="storage root to check")
    p.add_argument("--repair", action="store_true", help="move damaged files aside and remove the markers of "
                   "the runs to redo (nothing is deleted)")
    p.add_argument("--sizes-only", action="store_true", help="compare sizes only (no file is read)")
    p.add_argument("--json", action="store_true", help="print JSON")


def verify_main(args: argparse.Namespace) -> int:
    """Exit 0 when every checked run is intact (or was repaired), 1 when damage is left to repair."""
    storage = Storage(args.storage, create=False)
    checks = check_storage(storage, hashes=not args.sizes_only)
    damaged = [c.stage_dir for c in checks if c.state == "damaged"]
    redo = runs_to_redo(damaged, dependents(storage)) if damaged else {}
    actions = repair(storage, checks, redo) if args.repair and redo else []
    if args.json:
        print(json.dumps({"runs": [{"stage_dir": c.stage_dir, "state": c.state, "files": c.files,
                                    "damage": [str(d) for d in c.damage]} for c in checks],
                          "redo": redo, "repaired": actions}, indent=2))
    else:
        print(render(checks, redo, actions, storage))
    return 0 if not redo or actions else 1


def render(checks: list[RunCheck], redo: Mapping[str, str], actions: list[str], storage: Storage) -> str:
    """The verdict for people: counts, each damaged file, each run to redo, what --repair did or would do."""
    tally = {s: sum(c.state == s for c in checks) for s in ("ok", "damaged", "unchecked")}
    lines = [f"{storage.root}: {len(checks)} finished stage runs: {tally['ok']} intact, {tally['damaged']} "
             f"damaged, {tally['unchecked']} unchecked (markers written before file lists)"]
    for check in checks:
        for damage in check.damage:
            lines.append(f"  damaged  {check.stage_dir}/{damage}")
    if redo:
        lines.append("runs to redo:")
        lines.extend(f"  {run}  ({why})" for run, why in redo.items())
    if actions:
        lines.append("repaired (the next `valley run` redoes these runs):")
        lines.extend(f"  {a}" for a in actions)
    elif redo:
        lines.append(f"run `valley verify {storage.root} --repair`, then the study again")
    return "\n".join(lines)
