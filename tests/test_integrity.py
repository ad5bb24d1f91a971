"""Integrity of finished stage runs: the marker lists every file with its size and sha256, a finished run
whose files changed size is refused by name, and `valley verify` finds damage (sizes, contents), names the
runs to redo (the damaged ones and everything downstream in the study) and `--repair` makes the next run
redo exactly those."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from valley.cli import main
from valley.experiment.executor import StudyExecutor
from valley.experiment.graph import DataParams, GenerateParams, GradeParams, Node, StudyGraph, TrainParams
from valley.experiment.status import StudyStatus
from valley.integrity import DamagedOutputError
from valley.stage import StageResult, run_stage
from valley.storage import SUCCESS, Storage
from valley.verify import runs_to_redo


class ToyResult(StageResult):
    rows: int = 0


class ToyTrainResult(StageResult):
    size_only = ("checkpoints",)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_marker_lists_every_file_hashed_while_written_or_read_back(tmp_path):
    storage = Storage(str(tmp_path))

    def body(out: str) -> ToyTrainResult:
        storage.write_parquet(pa.table({"x": list(range(100))}), out, "samples", "part-0.parquet")
        storage.write_json({"a": 1}, out, "meta.json")
        (tmp_path / out / "model").mkdir(parents=True)  # as save_pretrained or a Ray worker would write
        (tmp_path / out / "model" / "weights.bin").write_bytes(b"w" * 1000)
        (tmp_path / out / "checkpoints").mkdir()
        (tmp_path / out / "checkpoints" / "state.pt").write_bytes(b"c" * 5000)
        return ToyTrainResult(stage_dir=out)

    result = run_stage(storage, "train", "t", "f" * 64, ToyTrainResult, body)
    out = tmp_path / result.stage_dir
    files = json.loads((out / SUCCESS).read_text())["files"]
    assert set(files) == {"samples/part-0.parquet", "meta.json", "model/weights.bin", "checkpoints/state.pt"}
    for rel in ("samples/part-0.parquet", "meta.json", "model/weights.bin"):
        assert files[rel] == [(out / rel).stat().st_size, _sha(out / rel)]
    assert files["checkpoints/state.pt"] == [5000, ""]  # size only: resumable state nobody reads later
    assert storage.damaged_files(result.stage_dir, hashes=True) == []
    assert storage._written == {}  # the record of this run's writes is consumed by its marker


def test_a_finished_run_with_a_truncated_file_is_refused_by_name(tmp_path):
    storage = Storage(str(tmp_path))
    calls = Counter()

    def body(out: str) -> ToyResult:
        calls["body"] += 1
        storage.write_parquet(pa.table({"x": list(range(50))}), out, "part-0.parquet")
        return ToyResult(stage_dir=out, rows=50)

    first = run_stage(storage, "generate", "g", "a" * 64, ToyResult, body)
    assert run_stage(storage, "generate", "g", "a" * 64, ToyResult, body).skipped
    part = tmp_path / first.stage_dir / "part-0.parquet"
    part.write_bytes(part.read_bytes()[:-10])
    with pytest.raises(DamagedOutputError, match=r"part-0\.parquet: size .* \(marker says .*valley verify"):
        run_stage(storage, "generate", "g", "a" * 64, ToyResult, body)
    part.unlink()
    with pytest.raises(DamagedOutputError, match=r"part-0\.parquet: missing"):
        run_stage(storage, "generate", "g", "a" * 64, ToyResult, body)
    assert calls["body"] == 1


def test_a_marker_without_a_file_list_is_still_trusted(tmp_path):
    storage = Storage(str(tmp_path))
    storage.write_json({"config_hash": "b" * 64, "summary": {"stage_dir": "x", "rows": 3}}, "grade", "g-bbbbbbbbbbbb",
                       SUCCESS)
    assert storage.damaged_files("grade/g-bbbbbbbbbbbb") is None
    assert run_stage(storage, "grade", "g", "b" * 64, ToyResult, lambda out: None).rows == 3


def _toy_graph() -> StudyGraph:
    """data ─ train ─┬─ generate g1 ─ grade r1 ─┐
                     └─ generate g2 ─ grade r2 ─┴─ report"""
    nodes = [Node("data:a", "data", "a", params=DataParams(())),
             Node("train:t", "train", "t", ("data:a",), params=TrainParams("t", "r1", 1, "data:a", None, False))]
    for i in (1, 2):
        nodes += [Node(f"generate:g{i}", "generate", f"g{i}", ("train:t",), params=GenerateParams(f"g{i}", "train:t")),
                  Node(f"grade:r{i}", "grade", f"r{i}", (f"generate:g{i}",),
                       params=GradeParams(f"g{i}", f"generate:g{i}"))]
    nodes.append(Node("report", "report", "x", ("grade:r1", "grade:r2")))
    return StudyGraph("toy", tuple(nodes), ())


def _run_study(storage: Storage, ran: Counter) -> dict[str, str]:
    """The toy study with every node a real stage run (run_stage) writing one Parquet part."""

    def run(node, inputs, context):
        def body(out: str) -> ToyResult:
            ran[node.id] += 1
            storage.write_parquet(pa.table({"node": [node.id] * 20}), out, "part-0.parquet")
            return ToyResult(stage_dir=out, rows=20)

        digest = hashlib.sha256(node.id.encode()).hexdigest()
        return {"stage_dir": run_stage(storage, node.kind, node.name, digest, ToyResult, body).stage_dir}

    graph = _toy_graph()
    status = StudyStatus(storage, "toy")
    status.start(graph, {"experiment": "toy"})
    outcome = StudyExecutor(graph, run, {}, status).run()
    return {**outcome.states, **{f"error:{k}": v for k, v in outcome.errors.items()}}


def test_verify_names_damage_and_repair_redoes_exactly_the_runs_downstream(tmp_path, capsys):
    storage, ran = Storage(str(tmp_path)), Counter()
    assert set(_run_study(storage, ran).values()) == {"done"}
    assert main(["verify", str(tmp_path)]) == 0
    assert "7 intact, 0 damaged" in capsys.readouterr().out

    g2 = next(p for p in (tmp_path / "generate").iterdir() if p.name.startswith("g2-"))
    part = g2 / "part-0.parquet"
    part.write_bytes(part.read_bytes()[:100])  # truncated by a failed copy
    states = _run_study(storage, ran)
    assert states["generate:g2"] == "failed" and "part-0.parquet: size 100" in states["error:generate:g2"]
    assert states["grade:r2"] == "skipped" and states["grade:r1"] == "done"

    assert main(["verify", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"damaged  generate/{g2.name}/part-0.parquet: size 100" in out
    assert f"generate/{g2.name}  (damaged)" in out and "(reads generate/" in out and "report/x-" in out
    assert "--repair" in out

    before = Counter(ran)
    assert main(["verify", str(tmp_path), "--repair"]) == 0
    out = capsys.readouterr().out
    assert "marker removed" in out and "_set_aside" in out
    aside = list((tmp_path / "_set_aside").rglob("part-0.parquet"))
    assert len(aside) == 3  # the damaged part, and the outputs of the grade and report that read it
    assert set(_run_study(storage, ran).values()) == {"done"}
    assert ran - before == Counter({"generate:g2": 1, "grade:r2": 1, "report": 1})
    assert main(["verify", str(tmp_path)]) == 0


def test_verify_finds_a_changed_byte_that_sizes_miss(tmp_path, capsys):
    storage, ran = Storage(str(tmp_path)), Counter()
    _run_study(storage, ran)
    part = next((tmp_path / "data").iterdir()) / "part-0.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    assert main(["verify", str(tmp_path), "--sizes-only"]) == 0
    capsys.readouterr()
    assert main(["verify", str(tmp_path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    damaged = [r for r in report["runs"] if r["state"] == "damaged"]
    assert len(damaged) == 1 and "content changed" in damaged[0]["damage"][0]
    assert len(report["redo"]) == 7  # the data run and every run of the study below it


def test_runs_to_redo_follows_consumers_once():
    edges = {"a": {"b", "c"}, "b": {"d"}, "c": {"d"}}
    assert runs_to_redo(["a"], edges) == {"a": "damaged", "b": "reads a", "c": "reads a", "d": "reads b"}
