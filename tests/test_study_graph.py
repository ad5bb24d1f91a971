"""The study as a graph: `plan_study` for the shipped specs, and the executor's scheduling, limits and failure
handling with stand-in stages (no Ray; the real stages on a multi-node cluster: tests/test_study_cluster.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from valley.experiment import load_spec, plan_study
from valley.experiment.executor import (
    StudyExecutor,
    UpstreamFailed,
    critical_path_s,
    default_limits,
    fits,
    priorities,
)
from valley.experiment.graph import (
    DataParams,
    GenerateParams,
    GradeParams,
    Node,
    StudyGraph,
    TrainParams,
    plan_rows,
)
from valley.experiment.status import StudyStatus, read_study, status_rows

REPO = Path(__file__).resolve().parents[1]


def _graph(name: str) -> StudyGraph:
    return plan_study(load_spec(REPO / "jobs" / "configs" / f"{name}.yaml"))


def nodes_of_seeds(g) -> list[str]:
    return [n.id for n in g.nodes if n.kind == "train" and n.params.size == 100]


def test_demo_graph_nodes_and_edges():
    g = _graph("demo-full")
    # 4 RQ1 runs (r100 with 3 seeds), 2 RQ2 + 2 RQ3 subsets each from base and from r1200; evaluations: base,
    # 14 trained models and epoch 1 of each RQ1 run and seed (epochs 0 and 2 are the base and final
    # evaluations, reused)
    assert {k: g.count(k) for k in ("data", "label", "train", "generate", "grade", "report")} == {
        "data": 2, "label": 1, "train": 14, "generate": 21, "grade": 21, "report": 1}
    assert nodes_of_seeds(g) == ["train:tiny-qwen2-r100", "train:tiny-qwen2-r100-s1", "train:tiny-qwen2-r100-s2"]
    nodes = g.by_id()
    s = "tiny-qwen2"
    assert nodes[f"train:{s}-correct-from-r1200"].deps == (f"data:{s}-labelled", f"train:{s}-r1200")
    assert nodes[f"train:{s}-easy-from-r1200"].deps == (f"data:{s}", f"train:{s}-r1200")
    assert nodes[f"train:{s}-correct-from-base"].deps == (f"data:{s}-labelled",)
    assert nodes[f"data:{s}-labelled"].deps == (f"label:{s}",)
    assert nodes[f"generate:{s}-r100-e1"].deps == (f"train:{s}-r100",)
    assert nodes[f"generate:{s}-r100-e1"].params.epoch == 1
    assert nodes[f"generate:{s}-base"].deps == ()
    assert nodes[f"grade:{s}-r400"].deps == (f"generate:{s}-r400",)
    assert set(nodes["report"].deps) == {n.id for n in g.nodes if n.kind in ("grade", "data")}
    # stage-2 runs hang off the 30K-like run only; the RQ1 runs do not wait for each other
    assert g.descendants(f"train:{s}-r400") == [f"generate:{s}-r400", f"grade:{s}-r400", f"generate:{s}-r400-e1",
                                                f"grade:{s}-r400-e1", "report"]
    assert sum(1 for d in g.descendants(f"train:{s}-r1200") if d.startswith("train:")) == 4
    # output directory names are the sequential runner's, so studies made before the graph are found again
    assert nodes[f"train:{s}-r100"].name == "valley-demo-full-tiny-qwen2-r100"
    assert nodes[f"grade:{s}-r100-e1"].name == "valley-demo-full-tiny-qwen2-r100-e1"
    aliases = {r.run_id: r.alias_of for r in g.runs if r.alias_of}
    runs = ["r100", "r100-s1", "r100-s2", "r400", "r1200", "r2800"]
    assert aliases == {f"{s}-{r}-e{e}": (f"{s}-base" if e == 0 else f"{s}-{r}") for r in runs for e in (0, 2)}


def test_paper_graph_nodes_and_edges():
    g = _graph("paper")
    # per student: 4 RQ1 runs + (2 RQ2 + 2 RQ3) x (base, r30000) = 12; evaluations: base + 12
    assert {k: g.count(k) for k in ("data", "label", "train", "generate", "grade")} == {
        "data": 4, "label": 2, "train": 24, "generate": 26, "grade": 26}
    q = "qwen2.5-7b-instruct"
    stage2 = [n for n in g.nodes if n.kind == "train" and n.name.endswith("-from-r30000") and n.student == q]
    assert len(stage2) == 4 and all(f"train:{q}-r30000" in n.deps for n in stage2)
    assert all(not d.startswith("train:") or d == f"train:{q}-r30000" for n in stage2 for d in n.deps)
    assert g.node(f"train:{q}-r1000").resources == {"CPU": 64.0, "GPU": 8.0}
    assert g.node(f"train:{q}-r1000").params.size == 1000
    # the two students share nothing
    llama = {n.id for n in g.nodes if n.student == "llama3.1-8b-instruct"}
    assert all(not (set(n.deps) & llama) for n in g.nodes if n.student == q)
    rows = plan_rows(g)
    assert rows[0]["node"] == f"data:{q}" and len(rows) == len(g.nodes)


def test_train_takes_max_seq_len_from_data_when_unset(tmp_path):
    import yaml

    from valley.experiment.spec import train_fields

    data = yaml.safe_load((REPO / "jobs" / "configs" / "demo.yaml").read_text())
    data["train"].pop("max_seq_len", None)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    spec = load_spec(path)
    assert train_fields(spec)["max_seq_len"] == data["data"]["max_seq_len"]


def test_critical_path_first_and_limits_from_the_cluster():
    g = _graph("paper")
    order = priorities(g)
    q = "qwen2.5-7b-instruct"
    # the 30K run has four training runs below it, the 1K run none
    assert order[f"train:{q}-r30000"] > order[f"train:{q}-r1000"]
    cluster = {"CPU": 4 * 128 + 64.0, "GPU": 32.0, "grader": 128.0}
    limits = default_limits(g, cluster, {"train": None, "generate": None, "grade": None})
    assert limits == {"train": 4, "generate": 4, "grade": None}  # 4 nodes of 8 GPUs
    assert default_limits(g, cluster, {"train": 2, "generate": None, "grade": 3})["train"] == 2
    assert fits({"GPU": 8}, {"CPU": 8}) == 1  # no GPUs yet (autoscaling): one at a time, Ray waits
    assert fits({"CPU": 1}, {"CPU": 2}, reserve_cpu=1) == 1


def _toy_graph() -> StudyGraph:
    """a ─┬─ t1 ─ g1 ─ r1 ─┐
          ├─ t2 ─ g2 ─ r2 ─┼─ report
          └─ t3 ─ g3 ─ r3 ─┘"""
    nodes = [Node("data:a", "data", "a", params=DataParams(()))]
    for i in (1, 2, 3):
        nodes += [Node(f"train:t{i}", "train", f"t{i}", ("data:a",), {"CPU": 1},
                       params=TrainParams(f"t{i}", "r1", 1, "data:a", None, False)),
                  Node(f"generate:g{i}", "generate", f"g{i}", (f"train:t{i}",), {"CPU": 1},
                       params=GenerateParams(f"g{i}", f"train:t{i}")),
                  Node(f"grade:r{i}", "grade", f"r{i}", (f"generate:g{i}",), params=GradeParams(f"g{i}", f"generate:g{i}"))]
    nodes.append(Node("report", "report", "x", tuple(f"grade:r{i}" for i in (1, 2, 3))))
    return StudyGraph("toy", tuple(nodes), ())


def _runner(fail: str | None = None, seconds: float = 0.05):
    lock, active, peak = threading.Lock(), {"train": 0}, {"train": 0}

    def run(node, inputs, context):
        assert set(inputs) == set(node.deps)
        with lock:
            active[node.kind] = active.get(node.kind, 0) + 1
            peak[node.kind] = max(peak.get(node.kind, 0), active[node.kind])
        time.sleep(seconds)
        with lock:
            active[node.kind] -= 1
        if node.id == fail:
            raise RuntimeError(f"{node.id} broke\nsecond line")
        return {"from": node.id}

    return run, peak


def test_executor_runs_independent_nodes_concurrently_under_limits(tmp_path):
    from valley.storage import Storage

    g = _toy_graph()
    run, peak = _runner(seconds=0.2)
    status = StudyStatus(Storage(str(tmp_path)), "toy")
    status.start(g, {"experiment": "toy"})
    outcome = StudyExecutor(g, run, {"train": 2, "generate": None, "grade": None}, status).run()
    assert set(outcome.states.values()) == {"done"}
    assert peak["train"] == 2  # three ready trainings, two at a time
    spans = [outcome.intervals[f"train:t{i}"] for i in (1, 2)]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]  # they overlapped
    # evaluation of a finished run overlaps the training still running
    t3, g1 = outcome.intervals["train:t3"], outcome.intervals["generate:g1"]
    assert g1[0] < t3[1]
    assert critical_path_s(g, outcome.intervals) <= max(e for _, e in outcome.intervals.values()) - min(
        s for s, _ in outcome.intervals.values()) + 1e-6
    _, records, driver = read_study(Storage(str(tmp_path)), "toy")
    assert {r["state"] for r in records.values()} == {"done"} and records["report"]["outputs"] == {"from": "report"}


def test_a_failed_node_fails_only_its_descendants(tmp_path):
    from valley.storage import Storage

    storage = Storage(str(tmp_path))
    g = _toy_graph()
    run, _ = _runner(fail="train:t2")
    status = StudyStatus(storage, "toy")
    status.start(g, {"experiment": "toy"})
    outcome = StudyExecutor(g, run, {}, status).run()
    assert outcome.failed == ["train:t2"]
    assert sorted(outcome.skipped) == ["generate:g2", "grade:r2", "report"]
    assert all(outcome.states[n] == "done" for n in ("train:t1", "train:t3", "grade:r1", "grade:r3"))
    assert outcome.errors["train:t2"] == "RuntimeError: train:t2 broke"
    assert "second line" in Path(outcome.logs["train:t2"]).read_text()
    _, records, _ = read_study(storage, "toy")
    rows = {r["node"]: r for r in status_rows(g, records, time.time())}
    assert rows["grade:r2"]["state"] == "skipped" and "after train:t2 failed" in rows["grade:r2"]["why"]
    assert rows["train:t2"]["state"] == "failed" and "broke" in rows["train:t2"]["why"]


def test_status_command_reads_a_study(tmp_path, capsys):
    from valley.cli import main
    from valley.storage import Storage

    g = _toy_graph()
    run, _ = _runner(fail="generate:g3", seconds=0.0)
    status = StudyStatus(Storage(str(tmp_path)), "toy")
    status.start(g, {"experiment": "toy"})
    StudyExecutor(g, run, {}, status).run()
    status.driver("failed")
    assert main(["status", str(tmp_path), "--json"]) == 1
    import json

    out = json.loads(capsys.readouterr().out)
    assert out["toy"]["counts"]["failed"] == 1 and out["toy"]["counts"]["skipped"] == 2
    assert out["toy"]["driver"] == "failed"
    assert main(["status", str(tmp_path / "nothing-here")]) == 2


def test_status_calls_a_killed_drivers_running_nodes_interrupted(tmp_path, capsys):
    """A driver killed mid-study leaves `running` records behind; status must not show them as running."""
    import json
    import subprocess
    import sys

    from valley.cli import main
    from valley.storage import Storage

    g = _toy_graph()
    status = StudyStatus(Storage(str(tmp_path)), "toy")
    status.start(g, {"experiment": "toy"})
    status.update("train:t1", state="running", started_at=time.time())
    assert main(["status", str(tmp_path), "--json"]) == 0
    alive = json.loads(capsys.readouterr().out)["toy"]
    assert alive["driver"] == "running" and alive["counts"]["running"] == 1
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = Storage(str(tmp_path)).read_json("experiments", "toy", "study", "driver.json")
    Storage(str(tmp_path)).write_json({**record, "pid": int(exited.stdout)}, "experiments", "toy", "study",
                                      "driver.json")
    assert main(["status", str(tmp_path), "--json"]) == 0
    gone = json.loads(capsys.readouterr().out)["toy"]
    assert gone["driver"].startswith("gone (its process")
    row = next(r for r in gone["nodes"] if r["node"] == "train:t1")
    assert row["state"] == "interrupted" and "valley run" in row["why"]
    assert gone["counts"]["interrupted"] == 1 and gone["counts"]["running"] == 0


def test_graph_rejects_a_node_before_its_dependency():
    with pytest.raises(ValueError, match="dependencies"):
        StudyGraph("x", (Node("b", "train", "b", ("a",)), Node("a", "data", "a")), ())


def _following_graph() -> StudyGraph:
    return StudyGraph("follow", (
        Node("generate:g", "generate", "g", (), {"CPU": 1}, params=GenerateParams("g", None)),
        Node("grade:g", "grade", "g", ("generate:g",), params=GradeParams("g", "generate:g"), follows=("generate:g",)),
        Node("report", "report", "x", ("grade:g",)),
    ), ())


def _follower(fail_generate: bool):
    """generate announces, writes three parts slowly; grade reads parts until generate is done."""
    parts: list[int] = []
    seen_while_running: list[int] = []

    def run(node, inputs, context):
        if node.kind == "generate":
            context.announce({"samples": "s"})
            for i in range(3):
                time.sleep(0.3)
                parts.append(i)
            if fail_generate:
                raise RuntimeError("generation broke")
            return {"samples": "s"}
        if node.kind == "grade":
            assert "generate:g" not in inputs  # it started before its input finished
            while True:
                state = context.state_of("generate:g")
                if state == "failed":
                    raise UpstreamFailed("generate:g")
                if context.announced("generate:g") and parts and not seen_while_running:
                    seen_while_running.append(len(parts))
                if state == "done":
                    return {"graded": len(parts)}
                time.sleep(0.05)
        return {}

    return run, seen_while_running


def test_grading_follows_a_running_generation():
    outcome = StudyExecutor(_following_graph(), _follower(False)[0], {}).run()
    assert set(outcome.states.values()) == {"done"}
    gen, grade = outcome.intervals["generate:g"], outcome.intervals["grade:g"]
    assert grade[0] < gen[1]  # grading started while generation ran
    assert outcome.outputs["grade:g"] == {"graded": 3}


def test_a_follower_of_a_failed_generation_is_skipped():
    run, seen = _follower(True)
    outcome = StudyExecutor(_following_graph(), run, {}).run()
    assert outcome.states == {"generate:g": "failed", "grade:g": "skipped", "report": "skipped"}
    assert seen and seen[0] < 3  # it had graded parts before the failure


def test_partial_report_covers_the_finished_evaluations(tmp_path):
    """`valley report --partial` from a study's records: only the run whose grading finished is reported."""
    import pyarrow as pa

    from valley import schemas
    from valley.experiment.command import partial_report
    from valley.experiment.graph import EvalRun
    from valley.experiment.spec import ExperimentSpec
    from valley.storage import Storage

    storage = Storage(str(tmp_path))
    problems = pa.table({"question_id": ["q0", "q1"], "question_content": ["a", "b"], "tests": ["[]", "[]"]})
    storage.write_parquet(problems, "in", "problems.parquet", schema=schemas.PROBLEMS)
    samples = [{"run_id": "s-base", "question_id": q, "sample_idx": 0, "response": "```python\nprint(1)\n```",
                "n_tokens": 10, "finish_reason": "stop"} for q in ("q0", "q1")]
    storage.write_parquet(pa.Table.from_pylist(samples), "in", "samples", "part-0.parquet", schema=schemas.SAMPLES)
    verdicts = [{"run_id": "s-base", "question_id": "q0", "sample_idx": 0, "verdict": "pass"},
                {"run_id": "s-base", "question_id": "q1", "sample_idx": 0, "verdict": "wrong_answer"}]
    storage.write_parquet(pa.Table.from_pylist(verdicts), "in", "verdicts.parquet", schema=schemas.VERDICTS)
    spec = ExperimentSpec.model_validate({
        "experiment": "toy", "students": [{"name": "s", "model": "/m"}],
        "study": {"scaling_sizes": [10], "correctness_size": None, "difficulty_size": None, "stage2_from_size": None},
        "data": {"inputs": ["/t.jsonl"]}, "label": None, "generate": {"problems": ["/p.jsonl"], "max_tokens": 64},
        "report": {"n_boot": 10, "parallel": False}})
    graph = plan_study(spec)
    assert [r.run_id for r in graph.runs] == ["s-base", "s-r10"] and isinstance(graph.runs[0], EvalRun)
    status = StudyStatus(storage, "toy")
    status.start(graph, spec.model_dump(mode="json"))
    tables = {"samples": "in/samples", "verdicts": "in/verdicts.parquet", "problems": "in/problems.parquet"}
    status.update("grade:s-base", state="done", outputs={"stage_dir": "grade/x", **tables})
    out = partial_report(storage, None)
    assert [r["run_id"] for r in out["runs"]] == ["s-base"]
    assert out["stage_dir"].startswith("report/toy-partial-") and storage.exists(out["report_md"])
