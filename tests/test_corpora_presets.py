"""Column presets on rows in the public corpora's exact shapes, difficulty buckets, and inputs by URI."""

from __future__ import annotations

import json

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from valley.data.columns import map_row, resolve
from valley.data.config import ColumnMapping, DataConfig
from valley.data.difficulty import difficulty_bucket
from valley.data.ingest import process_chunk
from valley.data.join_sources import codeforces_statement
from valley.data.joins import plan_sources, source_rows
from valley.data.readers import Chunk, expand_inputs, file_fingerprint, plan_chunks
from valley.data.validate import Reject, validate_trace


def _map(preset: str, raw: dict) -> list[dict]:
    return map_row(raw, resolve(ColumnMapping(preset=preset)), {})


def test_ocr2_preset_keeps_the_placeholder_for_the_join():
    row = {"question": "-", "r1_generation": "<think>t</think>code", "qwq_critique": "ok", "solution": "code",
           "judgement": "right", "pass_rate": "0.75", "source": "codeforces", "license": "cc-by-4.0",
           "dataset": "taco", "split": "train", "difficulty": "MEDIUM", "index": "17", "id": "abc",
           "question_id": "qid"}
    [mapped] = _map("ocr2", row)
    assert (mapped["question"], mapped["source"], mapped["difficulty"], mapped["id"]) == ("-", "taco", "MEDIUM", "abc")
    ok = validate_trace(mapped, source_file="f", source_row=0, max_chars=100, allow_placeholder=True)
    assert ok["difficulty_bucket"] == "medium"
    assert validate_trace(mapped, source_file="f", source_row=0, max_chars=100) == Reject(
        "question", "placeholder", "'-' (join the source dataset's text)")


def test_taco_trace_preset_on_string_columns():
    row = {"question": "Q", "solutions": json.dumps(["print(1)", "print(2)"]), "starter_code": "",
           "input_output": json.dumps({"inputs": ["1\n"], "outputs": ["1\n"]}), "difficulty": "UNKNOWN_DIFFICULTY",
           "raw_tags": "['Sorting']", "name": "A", "source": "codechef", "tags": "[]", "skill_types": "[]",
           "url": "u", "Expected Auxiliary Space": "O(1)", "Expected Time Complexity": "O(N)",
           "time_limit": "1 seconds", "memory_limit": "256 megabytes", "picture_num": "0"}
    rows = _map("taco", row)
    assert [r["response"] for r in rows] == ["print(1)", "print(2)"]
    out = validate_trace(rows[0], source_file="taco.parquet", source_row=4, max_chars=100)
    assert out["difficulty"] == "UNKNOWN_DIFFICULTY" and out["difficulty_bucket"] is None
    assert json.loads(out["tests"]) == {"inputs": ["1\n"], "outputs": ["1\n"]} and out["id"] == "taco.parquet:4:0"


def test_codeforces_cots_openthoughts_rstar_and_alias_presets():
    cots = {"id": "1/A", "prompt": "P", "generation": "<think>x</think>y", "finish_reason": "stop",
            "messages": [{"role": "user", "content": "P"}, {"role": "assistant", "content": "<think>x</think>y"}]}
    [c] = _map("codeforces_cots", cots)
    assert (c["question_id"], c["question"], c["response"], c["id"]) == ("1/A", "P", "<think>x</think>y", None)
    cut = validate_trace(_map("codeforces_cots", dict(cots, finish_reason="length"))[0], source_file="f",
                         source_row=2, max_chars=99)
    assert cut == Reject("response", "unfinished", "finish_reason 'length'")
    ot = {"system": "Your role as an assistant ...",
          "conversations": [{"from": "user", "value": "Solve X"},
                            {"from": "assistant", "value": "<|begin_of_thought|>t<|end_of_thought|>ans"}]}
    [o] = _map("openthoughts", ot)
    assert (o["question"], o["response"]) == ("Solve X", "<|begin_of_thought|>t<|end_of_thought|>ans")
    [r] = _map("rstar_seed_sft", {"question_id": "7", "question": "Q", "response": "R", "is_passed": "True",
                                  "starter_code": ""})
    assert validate_trace(r, source_file="f", source_row=0, max_chars=99)["correct"] is True
    [a] = _map("alias", {"problem": "Q", "completion": "R", "model": "r1", "level": "hard"})
    assert (a["question"], a["response"], a["teacher"], a["difficulty"]) == ("Q", "R", "r1", "hard")


@pytest.mark.parametrize(("raw", "dataset", "bucket"), [
    ("EASY", None, "easy"), ("MEDIUM_HARD", "taco", "medium_hard"), ("VERY_HARD", None, "very_hard"),
    ("UNKNOWN_DIFFICULTY", None, None), ("easy", None, "easy"), ("Hard", None, "hard"),
    ("introductory", "apps", "introductory"), ("competition", None, "competition"),
    ("800", None, "cf_rating_0_1199"), ("1600", "open-r1/codeforces", "cf_rating_1600_1999"),
    ("3500", None, "cf_rating_2800_plus"), ("2", "code_contests", "medium"), ("7", "code_contests", "cf_index_A"),
    ("0", "code_contests", None), (None, None, None), ("-", None, None),
])
def test_difficulty_buckets(raw, dataset, bucket):
    assert difficulty_bucket(raw, dataset) == bucket


def test_codeforces_statement_reads_json_text_examples():
    row = {"description": "D", "input_format": "I", "output_format": "", "note": None,
           "examples": json.dumps([{"input": "1", "output": "2"}])}
    assert codeforces_statement(row) == "D\n\nInput\n\nI\n\nExamples\n\nInput\n\n1\n\nOutput\n\n2"


@pytest.fixture()
def memfs():
    fs = fsspec.filesystem("memory")
    yield fs
    fs.rm("/corpora", recursive=True)


def test_inputs_by_uri_on_fsspec_memory(memfs):
    rows = [{"question": "-", "r1_generation": "r", "dataset": "taco", "split": "train", "index": str(i),
             "id": f"t{i}", "question_id": "q", "difficulty": "EASY", "source": "x"} for i in range(5)]
    with memfs.open("/corpora/ocr2/part-0.jsonl", "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    taco = pa.table({"question": ["A", "B", "C"], "input_output": ['{"inputs": [], "outputs": []}'] * 3,
                     "difficulty": ["EASY", "HARD", "MEDIUM"], "starter_code": [""] * 3})
    for k, piece in enumerate((taco.slice(0, 2), taco.slice(2))):
        with memfs.open(f"/corpora/taco/train-{k:05d}.parquet", "wb") as f:
            pq.write_table(piece, f)
    files = expand_inputs(["memory://corpora/ocr2/*.jsonl"])
    assert files == ["memory:///corpora/ocr2/part-0.jsonl"] and file_fingerprint(files[0]).startswith(files[0])
    cfg = DataConfig(inputs=files, tokenizer="unused", columns=ColumnMapping(preset="ocr2"), chunk_rows=2,
                     joins=[{"name": "taco", "preset": "taco", "on": ["dataset", "split", "index"],
                             "from": {"train": ["memory://corpora/taco/*.parquet"]}}])
    chunks = plan_chunks(files, cfg.chunk_rows)
    assert [c.first_row for c in chunks] == [0, 2, 4]
    keys: list[dict] = []
    traces, rejects = process_chunk(chunks[1], cfg, keys)
    assert [t["id"] for t in traces] == ["t2", "t3"] and not rejects
    assert [(k["join"], k["key"].split("\x1f"), k["pos"]) for k in keys] == [
        ("taco", ["train", "2"], 0), ("taco", ["train", "3"], 1)]
    # the second shard's row 0 is index 2 of the split
    items = plan_sources(cfg)
    assert [(i["chunk"]["path"], i["offset"]) for i in items] == [
        ("memory:///corpora/taco/train-00000.parquet", 0), ("memory:///corpora/taco/train-00001.parquet", 2)]
    rows_out, stats = source_rows(cfg.joins[0], "train", Chunk(**items[1]["chunk"]), items[1]["offset"])
    assert [(r["key"].split("\x1f"), r["question"], r["difficulty"]) for r in rows_out] == [(["train", "2"], "C", "MEDIUM")]
    assert stats == {"source_rows": 1}
