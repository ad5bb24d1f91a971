"""Real corpus shapes end to end: OpenCodeReasoning-2's "-" questions joined to TACO, APPS, CodeContests and
open-r1/codeforces files written here in their published shapes; rejects with keys; RQ2/RQ3 subsets."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from valley.data.config import DataConfig, SubsetSpec
from valley.data.stage import run_data
from valley.demo import build_demo_tokenizer
from valley.storage import Storage

ADD = "You are given two integers a and b. Print a + b."
MUL = "You are given two integers a and b. Print a * b."
SUB = "You are given two integers a and b. Print a - b."
MAX = "You are given two integers a and b. Print the larger one."

TACO_COLUMNS = ("question", "solutions", "starter_code", "input_output", "difficulty", "raw_tags", "name", "source",
                "tags", "skill_types", "url", "Expected Auxiliary Space", "Expected Time Complexity", "time_limit",
                "memory_limit", "picture_num")
OCR2_COLUMNS = ("question", "r1_generation", "qwq_critique", "solution", "judgement", "pass_rate", "source",
                "license", "dataset", "split", "difficulty", "index", "id", "question_id")


def _io(pairs: list[tuple[str, str]]) -> str:
    return json.dumps({"inputs": [i for i, _ in pairs], "outputs": [o for _, o in pairs]})


def _taco_row(question: str, difficulty: str, name: str, pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Every TACO column is a string; lists are JSON or Python literals, numbers are digits."""
    row = dict.fromkeys(TACO_COLUMNS, "")
    row.update(question=question, solutions=json.dumps(["print(0)"]), input_output=_io(pairs), difficulty=difficulty,
               raw_tags="['Mathematics']", name=name, source="codeforces", tags="['Math']", skill_types="[]",
               url=f"https://codeforces.com/problemset/problem/{name}", time_limit="1 seconds",
               memory_limit="256 megabytes", picture_num="0")
    row["Expected Auxiliary Space"] = "O(1)"
    row["Expected Time Complexity"] = "O(1)"
    return row


def _code(expr: str) -> str:
    return f"<think>read a and b</think>\n```python\na, b = map(int, input().split())\nprint({expr})\n```"


def _ocr2(i: int, dataset: str, split: str, index: str, response: str, difficulty: str = "-") -> dict[str, str]:
    row = dict.fromkeys(OCR2_COLUMNS, "-")
    row.update(question="-", r1_generation=response, qwq_critique="fine", solution="print(0)", judgement="right",
               pass_rate="1.0", source="codeforces", license="cc-by-4.0", dataset=dataset, split=split,
               difficulty=difficulty, index=index, id=f"ocr2-{i}", question_id=f"{dataset}-{split}-{index}")
    return row


def write_sources(root: Path) -> dict[str, str]:
    """TACO (train over two shards, and test), APPS, CodeContests and open-r1/codeforces, as published."""
    taco = root / "taco"
    taco.mkdir()
    train = [_taco_row(ADD, "EASY", "1A", [("1 2\n", "3\n"), ("5 5\n", "10\n")]),
             _taco_row(MUL, "MEDIUM_HARD", "1B", [("2 3\n", "6\n")]),
             _taco_row(SUB, "HARD", "1C", [("5 3\n", "2\n")]),  # index 2: first row of the second shard
             _taco_row(MAX, "MEDIUM", "1D", [("1 2\n", "2\n")])]
    pq.write_table(pa.Table.from_pylist(train[:2]), taco / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(train[2:]), taco / "train-00001-of-00002.parquet")
    # test index 0 repeats train index 3's statement (TACO has such copies): a question-text key is ambiguous
    pq.write_table(pa.Table.from_pylist([_taco_row(MAX, "VERY_HARD", "9Z", [("3 1\n", "3\n")])]),
                   taco / "test-00000-of-00001.parquet")
    apps = root / "apps"
    apps.mkdir()
    (apps / "test.jsonl").write_text(json.dumps({
        "problem_id": 4000, "question": "Print the sum of a and b (APPS).", "solutions": json.dumps(["print(1)"]),
        "input_output": _io([("1 1\n", "2\n")]), "difficulty": "interview", "url": "https://x", "starter_code": ""}) + "\n")
    contests = root / "code_contests"
    contests.mkdir()
    cc_rows = [{"name": f"{k}_X", "description": f"CodeContests statement {k}", "source": 2, "difficulty": 7 + k,
                "public_tests": {"input": [f"{k}\n"], "output": [f"{k}\n"]},
                "private_tests": {"input": [], "output": []}, "generated_tests": {"input": ["9\n"], "output": ["9\n"]},
                "cf_rating": 1500, "cf_tags": ["math"], "time_limit": {"seconds": 2, "nanos": 0}} for k in range(2)]
    pq.write_table(pa.Table.from_pylist(cc_rows), contests / "train-00000-of-00001.parquet")
    cf = root / "codeforces"
    cf.mkdir()
    cf_row = {"id": "1000A", "contest_id": "1000", "index": "A", "title": "Sum", "description": "Add the numbers.",
              "input_format": "Two integers.", "output_format": "Their sum.", "interaction_format": None,
              "note": "Easy one.", "examples": [{"input": "1 2", "output": "3"}], "rating": 1600,
              "official_tests": [{"input": "1 2\n", "output": "3\n"}, {"input": "2 2\n", "output": "4\n"}]}
    pq.write_table(pa.Table.from_pylist([cf_row]), cf / "train-00000-of-00001.parquet")
    return {"taco": str(taco), "apps": str(apps), "code_contests": str(contests), "codeforces": str(cf)}


def ocr2_joins(src: dict[str, str]) -> list[dict]:
    """The joins of jobs/configs/paper.yaml, pointed at the small files."""
    return [
        {"name": "taco", "preset": "taco", "on": ["dataset", "split", "index"],
         "from": {"train": [f"{src['taco']}/train-*.parquet"], "test": [f"{src['taco']}/test-*.parquet"]}},
        {"name": "apps", "preset": "apps", "on": ["dataset", "split", "index"],
         "from": {"test": [f"{src['apps']}/test.jsonl"]}},
        {"name": "code_contests", "preset": "code_contests", "on": ["dataset", "split", "index"],
         "from": {"train": [f"{src['code_contests']}/*.parquet"]}},
        {"name": "codeforces", "dataset": ["open-r1/codeforces"], "preset": "codeforces",
         "on": ["dataset", "split", "index"], "from": {"train": [f"{src['codeforces']}/*.parquet"]}},
    ]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("corpora")
    src = write_sources(root)
    rows = [
        _ocr2(0, "taco", "train", "0", _code("a + b")),
        _ocr2(1, "taco", "train", "0", _code("a - b")),
        _ocr2(2, "taco", "train", "2", _code("a - b")),
        _ocr2(3, "taco", "train", "1", _code("a * b")),
        _ocr2(4, "taco", "train", "1", _code("a + b")),
        _ocr2(5, "taco", "test", "0", _code("max(a, b)")),
        _ocr2(6, "apps", "test", "0", _code("a + b"), difficulty="interview"),
        _ocr2(7, "code_contests", "train", "1", _code("a")),
        _ocr2(8, "open-r1/codeforces", "train", "0", _code("a + b")),
        _ocr2(9, "taco", "train", "99", _code("a")),  # no TACO row 99
        _ocr2(10, "some_other_set", "train", "0", _code("a")),  # no join serves it: the "-" stays
        _ocr2(11, "taco", "train", "", _code("a")),  # no index
    ]
    ocr2 = root / "ocr2" / "python"
    ocr2.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), ocr2 / "train-00000-of-00001.parquet")
    return {"root": str(root), "ocr2": str(ocr2), "tok": str(build_demo_tokenizer(root / "tok")), **src}


def _cfg(corpora, **kw) -> DataConfig:
    base = {"name": "ocr2", "inputs": [f"{corpora['ocr2']}/*.parquet"], "columns": {"preset": "ocr2"},
            "joins": ocr2_joins(corpora), "tokenizer": corpora["tok"], "max_seq_len": 1024, "join_partitions": 3,
            "subsets": [{"name": "all", "kind": "all"}]}
    base.update(kw)
    return DataConfig(**base)


def test_ocr2_joins_to_four_sources(ray_local, corpora, tmp_path):
    storage = Storage(str(tmp_path / "s"))
    result = run_data(_cfg(corpora), storage)
    out = result.stage_dir
    traces = {t["id"]: t for t in storage.read_parquet(out, "traces").to_pylist()}
    assert sorted(traces) == [f"ocr2-{i}" for i in range(9)]
    t = traces["ocr2-0"]
    assert (t["question"], t["difficulty"], t["difficulty_bucket"], t["source"]) == (ADD, "EASY", "easy", "taco")
    assert json.loads(t["tests"]) == {"inputs": ["1 2\n", "5 5\n"], "outputs": ["3\n", "10\n"]}
    assert traces["ocr2-2"]["question"] == SUB  # index 2 lives in the second shard of the split
    assert traces["ocr2-3"]["difficulty_bucket"] == "medium_hard"
    assert (traces["ocr2-5"]["question"], traces["ocr2-5"]["difficulty"]) == (MAX, "VERY_HARD")
    assert (traces["ocr2-6"]["question"], traces["ocr2-6"]["difficulty_bucket"]) == (
        "Print the sum of a and b (APPS).", "interview")
    cc = traces["ocr2-7"]
    assert cc["question"] == "CodeContests statement 1" and cc["difficulty"] == "8"
    assert cc["difficulty_bucket"] == "cf_index_B"  # CodeContests enum 8 = problem letter B
    assert json.loads(cc["tests"]) == {"inputs": ["1\n", "9\n"], "outputs": ["1\n", "9\n"]}
    cf = traces["ocr2-8"]
    assert cf["question"] == ("Add the numbers.\n\nInput\n\nTwo integers.\n\nOutput\n\nTheir sum.\n\nExamples\n\n"
                              "Input\n\n1 2\n\nOutput\n\n3\n\nNote\n\nEasy one.")
    assert (cf["difficulty"], cf["difficulty_bucket"]) == ("1600", "cf_rating_1600_1999")
    assert json.loads(cf["tests"])["outputs"] == ["3\n", "4\n"]

    rejects = {json.loads(r["raw"]).get("id"): r for r in storage.read_parquet(out, "rejects").to_pylist()}
    assert rejects["ocr2-9"]["reason"].startswith("join_no_match: join 'taco' key (train, 99)")
    assert rejects["ocr2-10"]["reason"].startswith("placeholder")
    assert rejects["ocr2-11"]["reason"].startswith("join_key_missing: join 'taco': no 'index'")
    assert all(r["source_file"].endswith("train-00000-of-00001.parquet") for r in rejects.values())
    assert result.rejected_by_reason == {"join_no_match": 1, "placeholder": 1, "join_key_missing": 1}
    manifest = storage.read_json(out, "manifest.json")
    assert manifest["joins"]["taco"] == {"matched": 6, "no_match": 1, "duplicate": 0, "unmatched": 0,
                                         "source_rows": 5}
    assert {j: manifest["joins"][j]["matched"] for j in ("apps", "code_contests", "codeforces")} == {
        "apps": 1, "code_contests": 1, "codeforces": 1}
    assert manifest["accepted"] == 9
    assert not list(Path(storage.path(result.stage_dir)).glob("pending/._tmp-*"))


def test_question_text_join_rejects_ambiguous_keys(ray_local, corpora, tmp_path):
    """codeforces-cots traces take TACO's difficulty and tests by question text; TACO's copies are ambiguous."""
    cots = Path(corpora["root"]) / "cots.jsonl"
    base = {"contest_id": "1", "title": "t", "messages": [], "editorial": None}
    rows = [dict(base, id="1/A", prompt="  " + ADD.replace(" ", "\n", 2), generation=_code("a + b"),
                 finish_reason="stop"),
            dict(base, id="1/B", prompt=MAX, generation=_code("max(a, b)"), finish_reason="stop"),
            dict(base, id="1/C", prompt="A problem TACO does not have.", generation=_code("a"), finish_reason="stop"),
            dict(base, id="1/D", prompt=MUL, generation="<think>long", finish_reason="length")]
    cots.write_text("".join(json.dumps(r) + "\n" for r in rows))
    taco = {"name": "taco", "preset": "taco", "on": ["question_hash"], "required": False,
            "take": {"tests": "input_output", "difficulty": "difficulty"},
            "from": {"train": [f"{corpora['taco']}/train-*.parquet"], "test": [f"{corpora['taco']}/test-*.parquet"]}}
    storage = Storage(str(tmp_path / "s"))
    result = run_data(_cfg(corpora, name="cots", inputs=[str(cots)], columns={"preset": "codeforces_cots"},
                           joins=[taco]), storage)
    out = result.stage_dir
    traces = {t["question_id"]: t for t in storage.read_parquet(out, "traces").to_pylist()}
    assert sorted(traces) == ["1/A", "1/C"]
    assert (traces["1/A"]["difficulty"], traces["1/A"]["difficulty_bucket"]) == ("EASY", "easy")
    assert traces["1/A"]["question"].startswith("  You\nare\ngiven")  # the trace's own text is kept
    assert traces["1/C"]["tests"] is None  # optional join: no match keeps the trace as it was
    reasons = sorted(r["reason"].split(":")[0] for r in storage.read_parquet(out, "rejects").to_pylist())
    assert reasons == ["join_duplicate", "unfinished"]
    dup = next(r for r in storage.read_parquet(out, "rejects").to_pylist() if r["reason"].startswith("join_dup"))
    assert "2 source rows: test-00000-of-00001.parquet:0, train-00001-of-00002.parquet:1" in dup["reason"]
    joins = storage.read_json(out, "manifest.json")["joins"]["taco"]
    assert (joins["matched"], joins["duplicate"], joins["unmatched"]) == (1, 1, 1)


@pytest.mark.slow
def test_rq2_and_rq3_subsets_from_joined_taco_traces(ray_local, corpora, tmp_path):
    """RQ3 splits on TACO's bucket; RQ2 labels the joined traces with TACO's tests, then splits on `correct`."""
    from valley.grade.config import LabelConfig
    from valley.grade.label import run_label

    storage = Storage(str(tmp_path / "s"))
    # sizes given, as the experiment gives `difficulty_size` and `correctness_size`
    rq3 = [SubsetSpec(name=k, kind=k, size=2, sources=["taco"]) for k in ("easy", "hard")]
    first = run_data(_cfg(corpora, subsets=rq3), storage)
    out = first.stage_dir

    def ids(data_out: str, subset: str) -> set[str]:
        return set(storage.read_parquet(data_out, "subsets", f"{subset}.parquet").column("id").to_pylist())

    # TACO traces: 0, 1 easy; 2, 3, 4, 5 hard (HARD, MEDIUM_HARD, MEDIUM_HARD, VERY_HARD): 2 each side
    assert ids(out, "easy") == {"ocr2-0", "ocr2-1"} and len(ids(out, "hard")) == 2
    assert ids(out, "hard") <= {"ocr2-2", "ocr2-3", "ocr2-4", "ocr2-5"}

    labelled = run_label(LabelConfig(name="ocr2", traces=f"{out}/traces", timeout_s=5.0, batch_size=4), storage)
    correct = {r["id"]: r["correct"] for r in storage.read_parquet(labelled.traces_dir).to_pylist()}
    assert {k: correct[k] for k in ("ocr2-0", "ocr2-1", "ocr2-2", "ocr2-3", "ocr2-4", "ocr2-5")} == {
        "ocr2-0": True, "ocr2-1": False, "ocr2-2": True, "ocr2-3": True, "ocr2-4": False, "ocr2-5": True}
    rq2 = [SubsetSpec(name=k, kind=k, size=2, sources=["taco"]) for k in ("correct", "incorrect")]
    second = run_data(_cfg(corpora, name="ocr2-labelled", joins=[], columns={"preset": "valley"},
                           inputs=[f"{storage.uri(labelled.traces_dir)}/*.parquet"], subsets=rq2),
                      storage)
    out2 = second.stage_dir
    assert ids(out2, "incorrect") == {"ocr2-1", "ocr2-4"} and len(ids(out2, "correct")) == 2
    again = {t["id"]: t for t in storage.read_parquet(out2, "traces").to_pylist()}
    assert again["ocr2-3"]["difficulty_bucket"] == "medium_hard"  # the bucket survives the re-ingest


@pytest.mark.slow
def test_join_resumes_from_finished_passes(ray_local, corpora, tmp_path):
    """A run killed after ingest and the source scatter finishes the rest; traces equal a clean run's."""
    from valley.data.ingest import run_ingest
    from valley.data.joins import plan_sources, scatter_item
    from valley.data.readers import expand_inputs, plan_chunks
    from valley.data.stage import run_hash
    from valley.data.task_map import map_items
    from valley.storage import stage_dir

    cfg = _cfg(corpora)
    killed = Storage(str(tmp_path / "killed"))
    files = expand_inputs(cfg.inputs)
    out = stage_dir("data", cfg.name, run_hash(cfg, files))
    run_ingest(plan_chunks(files, cfg.chunk_rows), cfg, killed, out)
    map_items(scatter_item, plan_sources(cfg), cfg, killed, out)
    assert killed.list(out, "pending") and not killed.list(out, "traces")
    resumed = run_data(cfg, killed)
    clean = run_data(cfg, Storage(str(tmp_path / "clean")))
    assert resumed.accepted == clean.accepted == 9 and resumed.rejected_by_reason == clean.rejected_by_reason

    def table(storage: Storage, result) -> pa.Table:
        return storage.read_parquet(result.stage_dir, "traces").sort_by("id")

    assert table(killed, resumed).equals(table(Storage(str(tmp_path / "clean")), clean))
    assert not killed.list(out, "pending")  # finished parts leave no pending copy behind
