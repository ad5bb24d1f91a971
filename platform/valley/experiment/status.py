"""The study's state on storage: its graph, one record per node, and the driver's heartbeat.

Written by the executor as nodes move (queued → running → done | failed | skipped), read by `valley status` and
`valley report --partial` from any machine that sees the storage, while the study runs or after it ended.

    experiments/<experiment>/study/graph.json          nodes, dependencies, resources, evaluation points
    experiments/<experiment>/study/spec.json           the validated spec the graph came from
    experiments/<experiment>/study/driver.json         host, pid, state, updated_at (heartbeat)
    experiments/<experiment>/study/nodes/<node>.json   state, started_at, ended_at, outputs, error, log
    experiments/<experiment>/study/errors/<node>.txt   the traceback of a failed node
    experiments/<experiment>/study/lineage.json        stage dir -> the stage dirs it read, kept across re-runs
                                                       (what `valley verify` redoes downstream of damage)
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from valley.experiment.graph import EvalRun, Node, StudyGraph
from valley.storage import Storage

STATES = ("queued", "running", "done", "failed", "skipped")
HEARTBEAT_S = 30.0  # the driver rewrites driver.json at least this often while it runs
STALE_AFTER_S = 3 * HEARTBEAT_S  # a "running" driver silent for longer is reported as gone


LINEAGE = "lineage.json"


def stage_dir_of(record: Mapping[str, Any]) -> str | None:
    """The root-relative stage directory a node's record says it made, if any."""
    value = (record.get("outputs") or {}).get("stage_dir")
    return value if isinstance(value, str) else None


def read_lineage(storage: Storage, *parts: str) -> dict[str, list[str]]:
    """A study's lineage.json ({} before its first finished node)."""
    return dict(storage.read_json(*parts, LINEAGE)) if storage.exists(*parts, LINEAGE) else {}


def file_name(node_id: str) -> str:
    """`train:s-r100` -> `train.s-r100.json`: node ids are `<kind>:<stage config name>`."""
    return node_id.replace(":", ".", 1) + ".json"


class StudyStatus:
    """Writes the study's state; every write is atomic (Storage.write_json), so readers never see half a file."""

    def __init__(self, storage: Storage, experiment: str):
        self.storage = storage
        self.parts = ("experiments", experiment, "study")
        self.records: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._beat_at = 0.0
        self._deps: dict[str, tuple[str, ...]] = {}
        self.lineage: dict[str, list[str]] = {}

    def start(self, graph: StudyGraph, spec: Mapping[str, Any]) -> None:
        """Write the plan and the spec it came from (what `valley report --partial` needs), all nodes queued."""
        self.storage.write_json(dict(spec), *self.parts, "spec.json")
        graph_json = {"experiment": graph.experiment, "nodes": [n.as_dict() for n in graph.nodes],
                      "runs": [r.as_dict() for r in graph.runs]}
        self.storage.write_json(graph_json, *self.parts, "graph.json")
        self._deps = {node.id: node.deps for node in graph.nodes}
        self.lineage = read_lineage(self.storage, *self.parts)
        for node in graph.nodes:
            self.update(node.id, kind=node.kind, state="queued", started_at=None, ended_at=None, error=None,
                        log=None, because=None)
        self.driver("running")

    def update(self, node_id: str, **fields: Any) -> dict[str, Any]:
        with self._lock:
            record = {**self.records.get(node_id, {"id": node_id}), **fields}
            self.records[node_id] = record
            self.storage.write_json(record, *self.parts, "nodes", file_name(node_id))
            if fields.get("state") == "done":
                self._record_lineage(node_id)
            return record

    def _record_lineage(self, node_id: str) -> None:
        """Add a finished node's stage dir and the stage dirs of its inputs to lineage.json (never dropped by
        a later run, unlike the node records, which a new run resets)."""
        made = stage_dir_of(self.records[node_id])
        if made is None:
            return
        read = [d for dep in self._deps.get(node_id, ()) if (d := stage_dir_of(self.records.get(dep, {})))]
        if self.lineage.get(made) != read:
            self.lineage[made] = read
            self.storage.write_json(self.lineage, *self.parts, LINEAGE)

    def write_traceback(self, node_id: str, text: str) -> str:
        parts = (*self.parts, "errors", file_name(node_id).removesuffix(".json") + ".txt")
        self.storage.write_text(text, *parts)
        return self.storage.uri(*parts)

    def driver(self, state: str) -> None:
        self._beat_at = time.time()
        self.storage.write_json({"host": socket.gethostname(), "pid": os.getpid(), "state": state,
                                 "updated_at": self._beat_at}, *self.parts, "driver.json")

    def heartbeat(self) -> None:
        if time.time() - self._beat_at >= HEARTBEAT_S:
            self.driver("running")


def experiments(storage: Storage) -> list[str]:
    """Experiments under a storage root that have a study graph."""
    return [name for name in sorted(_dirs(storage, "experiments"))
            if storage.exists("experiments", name, "study", "graph.json")]


def _dirs(storage: Storage, *parts: str) -> list[str]:
    import pyarrow.fs as pafs

    base = storage.path(*parts)
    if storage.fs.get_file_info(base).type == pafs.FileType.NotFound:
        return []
    infos = storage.fs.get_file_info(pafs.FileSelector(base, recursive=False))
    return [i.base_name for i in infos if i.type == pafs.FileType.Directory]


def read_study(storage: Storage, experiment: str) -> tuple[StudyGraph, dict[str, dict[str, Any]], dict[str, Any]]:
    """(graph, node records by id, driver record) of a running or finished study."""
    parts = ("experiments", experiment, "study")
    if not storage.exists(*parts, "graph.json"):
        raise FileNotFoundError(f"no study graph at {storage.uri(*parts, 'graph.json')}; was it run with "
                                "`valley run`?")
    g = storage.read_json(*parts, "graph.json")
    graph = StudyGraph(g["experiment"], tuple(Node.from_dict(n) for n in g["nodes"]),
                       tuple(EvalRun(**r) for r in g["runs"]))
    records = {}
    for node in graph.nodes:
        if storage.exists(*parts, "nodes", file_name(node.id)):
            records[node.id] = storage.read_json(*parts, "nodes", file_name(node.id))
    driver = storage.read_json(*parts, "driver.json") if storage.exists(*parts, "driver.json") else {}
    return graph, records, driver


def driver_state(driver: Mapping[str, Any], now: float) -> str:
    """The driver's state, with a running driver that is gone called so: its process has exited (when it ran
    on this host, seen at once) or it stopped beating (killed, or its machine is unreachable)."""
    from valley.lease import process_alive

    state = driver.get("state", "unknown")
    if state != "running":
        return state
    if driver.get("host") == socket.gethostname() and "pid" in driver and not process_alive(int(driver["pid"])):
        return f"gone (its process {driver['pid']} has exited)"
    if now - float(driver.get("updated_at", 0)) > STALE_AFTER_S:
        return "gone (no heartbeat: killed, or its machine is unreachable)"
    return state


def driver_gone(state: str) -> bool:
    return state.startswith("gone")


def elapsed(record: Mapping[str, Any], now: float) -> float | None:
    start = record.get("started_at")
    if start is None:
        return None
    return float(record.get("ended_at") or now) - float(start)


def status_rows(graph: StudyGraph, records: Mapping[str, Mapping[str, Any]], now: float,
                driver_is_gone: bool = False) -> list[dict[str, str]]:
    """One row a node: state, elapsed time, and for a failed or skipped node why (pure). Under a driver that
    is gone a node left `running` is `interrupted`: nothing runs it any more, and `valley run` again resumes
    it from its last finished work."""
    rows = []
    for node in graph.nodes:
        rec = records.get(node.id, {})
        state = rec.get("state", "queued")
        secs = None if state == "running" and driver_is_gone else elapsed(rec, now)
        why = rec.get("error") or (f"after {rec['because']} failed" if rec.get("because") else "")
        if state == "running" and driver_is_gone:
            state, why = "interrupted", "its driver is gone; `valley run` again resumes it"
        if rec.get("log"):
            why = f"{why} (log: {rec['log']})"
        rows.append({"node": node.id, "state": state, "elapsed": "" if secs is None else f"{secs:,.0f}s",
                     "why": why})
    return rows


def counts(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    out = dict.fromkeys(STATES, 0)
    for rec in records:
        out[rec.get("state", "queued")] = out.get(rec.get("state", "queued"), 0) + 1
    return out


def finished_outputs(records: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Outputs of every node that finished, by node id."""
    return {nid: rec["outputs"] for nid, rec in records.items() if rec.get("state") == "done" and rec.get("outputs")}
