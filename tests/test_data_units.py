"""Pure parts of the data stage: readers, column mapping, validation, subsets, packing, loss masks."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import real_tokenizers
from valley.data.chat import ChatEncoder
from valley.data.columns import MissingField, map_row, resolve
from valley.data.config import ColumnMapping, DataConfig, SubsetSpec
from valley.data.ingest import process_chunk
from valley.data.packing import Doc, pack_best_fit, pack_efficiency
from valley.data.readers import iter_chunk, plan_chunks
from valley.data.subsets import dedup_questions, seeded_order, select_subsets, split_duplicate_ids
from valley.data.validate import Reject, think_structure, validate_trace
from valley.demo import build_demo_tokenizer, make_traces
from valley.errors import ConfigError, InputError

# ---- readers ---------------------------------------------------------------------------------


def test_jsonl_chunks_keep_exact_row_numbers(tmp_path):
    path = tmp_path / "t.jsonl"
    lines = [json.dumps({"n": i}) if i != 4 else "" for i in range(23)]  # row 4 is blank
    lines[7] = "{not json"
    path.write_text("\n".join(lines) + "\n")
    chunks = plan_chunks([str(path)], rows_per_chunk=5)
    assert len(chunks) == 5
    seen = [(row, value) for c in chunks for row, value in iter_chunk(c)]
    rows = [r for r, _ in seen]
    assert rows == [r for r in range(23) if r != 4]
    bad = dict(seen)[7]
    assert isinstance(bad, InputError) and "row 7" in str(bad) and str(path) in str(bad)
    assert all(v == {"n": r} for r, v in seen if r != 7)


def test_gzip_and_parquet_row_numbers(tmp_path):
    gz = tmp_path / "t.jsonl.gz"
    gz.write_bytes(gzip.compress(b"".join(json.dumps({"n": i}).encode() + b"\n" for i in range(7))))
    pq_path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"n": list(range(10))}), pq_path, row_group_size=3)
    chunks = plan_chunks([str(gz), str(pq_path)], rows_per_chunk=4)
    got = {c.kind: [] for c in chunks}
    for c in chunks:
        got[c.kind].extend(iter_chunk(c))
    assert got["jsonl.gz"] == [(i, {"n": i}) for i in range(7)]
    assert got["parquet"] == [(i, {"n": i}) for i in range(10)]
    assert sum(1 for c in chunks if c.kind == "parquet") == 2  # row groups 3+3 | 3+1


# ---- columns and validation ----------------------------------------------------------------


def test_presets_map_public_corpora():
    ocr = map_row({"id": "a", "input": "Q?", "output": "<think>x</think>A", "source": "cf"},
                  resolve(ColumnMapping(preset="ocr")), {})
    assert ocr[0]["question"] == "Q?" and ocr[0]["response"].startswith("<think>")
    taco = map_row({"id": 9, "question": "Q", "solutions": json.dumps(["a", "b"]), "difficulty": "EASY",
                    "input_output": {"inputs": ["1"], "outputs": ["1"]}},
                   resolve(ColumnMapping(preset="taco")), {"source": "taco"})
    assert [t["response"] for t in taco] == ["a", "b"]
    assert [t["id"] for t in taco] == ["9:0", "9:1"] and taco[0]["source"] == "taco"
    chat = map_row({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                                 {"role": "assistant", "content": "r"}]},
                   resolve(ColumnMapping(preset="messages")), {})
    assert (chat[0]["question"], chat[0]["response"]) == ("u", "r")
    with pytest.raises(MissingField) as err:
        map_row({"input": "Q"}, resolve(ColumnMapping(preset="ocr")), {})
    assert err.value.field == "response" and err.value.column == "output"


def test_explicit_columns_override_the_preset_after_json_round_trip():
    cfg = DataConfig(inputs=["x"], tokenizer="t", columns=ColumnMapping(preset="ocr", response="r1_generation"))
    again = DataConfig.model_validate_json(cfg.model_dump_json())
    assert resolve(again.columns)["response"] == "r1_generation"
    assert resolve(again.columns)["question"] == "input"


@pytest.mark.parametrize(
    ("mapped", "field", "reason"),
    [
        ({"question": "q"}, "response", "missing_field"),
        ({"question": "  ", "response": "r"}, "question", "empty"),
        ({"question": 3, "response": "r"}, "question", "wrong_type"),
        ({"question": "q", "response": "bad \ud800 surrogate"}, "response", "invalid_utf8"),
        ({"question": "q", "response": "r", "correct": "maybe"}, "correct", "wrong_type"),
        ({"question": "q", "response": "x" * 50}, "response", "too_long"),
    ],
)
def test_validation_rejects_name_field_and_reason(mapped, field, reason):
    out = validate_trace(mapped, source_file="f.jsonl", source_row=3, max_chars=40)
    assert isinstance(out, Reject) and (out.field, out.reason) == (field, reason)


def test_validation_normalises_and_derives():
    out = validate_trace({"question": "q", "response": "<think>a</think>b", "difficulty": "MEDIUM_HARD",
                          "correct": "true"}, source_file="/d/f.jsonl", source_row=5, max_chars=100)
    assert out["difficulty"] == "MEDIUM_HARD" and out["difficulty_bucket"] == "medium_hard"  # raw kept
    assert out["correct"] is True
    assert out["id"] == "f.jsonl:5" and out["question_id"].startswith("q-") and out["think"] == "closed"
    assert validate_trace({"question": "q", "response": "<think>a"}, source_file="f", source_row=0, max_chars=99,
                          think_policy="require_closed") == Reject("response", "think_unclosed")


def test_think_structure():
    assert think_structure("<think>a</think>code") == "closed"
    assert think_structure("\n<think>a") == "unclosed"
    assert think_structure("code only") == "none"
    assert think_structure("a</think><think>") == "malformed"


def test_process_chunk_writes_every_bad_row_aside(tmp_path):
    path = tmp_path / "mixed.jsonl"
    rows = [
        json.dumps({"id": "ok", "question": "q", "response": "r"}),
        json.dumps({"id": "noresp", "question": "q"}),
        "[1, 2]",
        "{oops",
        json.dumps({"id": "ok2", "question": "q2", "response": "r2"}),
    ]
    path.write_text("\n".join(rows) + "\n")
    cfg = DataConfig(inputs=[str(path)], tokenizer="unused")
    [chunk] = plan_chunks([str(path)], 100)
    traces, rejects = process_chunk(chunk, cfg)
    assert [t["id"] for t in traces] == ["ok", "ok2"]
    assert [(r["source_row"], r["field"], r["reason"].split(":")[0]) for r in rejects] == [
        (1, "response", "missing_field"), (2, "<row>", "not_an_object"), (3, "<row>", "invalid_json")]
    assert all(r["source_file"] == str(path) for r in rejects)


# ---- subsets -----------------------------------------------------------------------------------


def _meta(n: int, seed: int = 0) -> pa.Table:
    rows = make_traces(n, seed)
    return pa.table({
        "id": [r["id"] for r in rows],
        "question_id": [r["question_id"] for r in rows],
        "source": [r["source"] for r in rows],
        "difficulty": [r["difficulty"] for r in rows],
        "correct": [i % 3 != 0 for i in range(n)],
        "source_file": ["f"] * n,
        "source_row": list(range(n)),
    })


def _ids(t: pa.Table) -> list[str]:
    return t.column("id").to_pylist()


def test_random_subsets_nest_and_are_reproducible_in_any_input_order():
    meta = _meta(3000)
    specs = [SubsetSpec(name=f"r{k}", kind="random", size=k) for k in (100, 1000, 2500)]
    a = select_subsets(seeded_order(meta, seed=7), specs)
    shuffled = meta.take(pa.array(list(reversed(range(meta.num_rows)))))
    b = select_subsets(seeded_order(shuffled, seed=7), specs)
    assert all(_ids(a[s.name]) == _ids(b[s.name]) for s in specs)
    assert set(_ids(a["r100"])) < set(_ids(a["r1000"])) < set(_ids(a["r2500"]))
    other = select_subsets(seeded_order(meta, seed=8), specs)
    assert _ids(other["r100"]) != _ids(a["r100"])


def test_paired_subsets_are_equal_sized_and_disjoint():
    ordered = seeded_order(_meta(900), seed=0)
    got = select_subsets(ordered, [SubsetSpec(name="c", kind="correct"), SubsetSpec(name="i", kind="incorrect"),
                                   SubsetSpec(name="e", kind="easy", size=50), SubsetSpec(name="h", kind="hard", size=50)])
    assert got["c"].num_rows == got["i"].num_rows == 300  # a third is incorrect: the smaller side
    assert not set(_ids(got["c"])) & set(_ids(got["i"]))
    assert set(got["e"].column("difficulty").to_pylist()) <= {"easy", "medium"}
    assert set(got["h"].column("difficulty").to_pylist()) <= {"medium_hard", "hard", "very_hard"}
    with pytest.raises(ConfigError, match="only"):
        select_subsets(ordered, [SubsetSpec(name="big", kind="random", size=10_000)])


def test_duplicates_and_question_dedup():
    meta = _meta(50)
    dup = pa.concat_tables([meta, meta.slice(0, 3)])
    kept, dupes = split_duplicate_ids(dup)
    assert kept.num_rows == 50 and dupes.num_rows == 3
    deduped = dedup_questions(seeded_order(kept, 0))
    assert deduped.num_rows == len(set(kept.column("question_id").to_pylist()))


def test_the_first_of_duplicate_ids_is_first_in_file_and_row_order_not_in_table_order():
    meta = pa.table({"id": ["x", "y", "x", "x", "z"], "source_file": ["b", "b", "a", "a", "a"],
                     "source_row": [0, 1, 9, 4, 2], "question": ["b0", "b1", "a9", "a4", "a2"]})
    kept, dupes = split_duplicate_ids(meta)
    assert kept.column("question").to_pylist() == ["b1", "a4", "a2"]  # the table's order, a4 kept for x
    assert dupes.column("question").to_pylist() == ["a9", "b0"]  # in (file, row) order


# ---- packing -----------------------------------------------------------------------------------


def test_packing_boundaries_and_efficiency():
    import random

    rng = random.Random(0)
    docs = [Doc(f"d{i}", [i] * n, [0] * (n // 2) + [1] * (n - n // 2)) for i, n in
            enumerate(rng.randint(5, 120) for _ in range(300))]
    rows = pack_best_fit(docs, seq_len=128, pad_id=-1)
    assert all(len(r.input_ids) == len(r.loss_mask) == len(r.position_ids) == 128 for r in rows)
    by_id = {d.trace_id: d for d in docs}
    placed = []
    for row in rows:
        starts = [i for i, p in enumerate(row.position_ids) if p == 0]
        segments = [row.input_ids[a:b] for a, b in zip(starts, starts[1:] + [128])]
        for tid, seg in zip(row.trace_ids, segments):  # each document intact, position ids restart
            assert seg == by_id[tid].input_ids
            placed.append(tid)
        if row.n_tokens < 128:  # padding is its own segment with no loss
            assert segments[-1] == [-1] * (128 - row.n_tokens)
            assert row.loss_mask[row.n_tokens:] == [0] * (128 - row.n_tokens)
    assert sorted(placed) == sorted(by_id)
    assert pack_efficiency(rows, 128) > 0.95
    with pytest.raises(ValueError, match="longer than"):
        pack_best_fit([Doc("x", [1] * 200, [1] * 200)], 128, 0)


# ---- chat templates and loss masks ----------------------------------------------------------


def _assert_mask_is_assistant_turn(encoder: ChatEncoder, question: str, response: str):
    [enc] = encoder.encode([(question, response)])
    trained = [t for t, m in zip(enc.input_ids, enc.loss_mask) if m]
    assert encoder.tok.decode(trained) == enc.text[enc.prompt_chars:]
    assert response.strip() in enc.text[enc.prompt_chars:]
    mask = enc.loss_mask.tolist()
    first = mask.index(1)
    assert all(mask[first:])  # one contiguous assistant span at the end
    return enc


RESPONSE = "<think>\nLet me think about edge cases.\n</think>\n\n```python\nprint(sum(map(int, input().split())))\n```"


def test_mask_with_demo_tokenizer(tmp_path):
    enc = ChatEncoder(str(build_demo_tokenizer(tmp_path / "tok")))
    _assert_mask_is_assistant_turn(enc, "Add two numbers.", RESPONSE)


def test_mask_with_real_qwen25_and_llama31_tokenizers(tmp_path, shared_data):
    qwen = ChatEncoder(str(real_tokenizers.qwen25_dir(shared_data, tmp_path / "q25")))
    assert qwen.tok("Hello, world", add_special_tokens=False)["input_ids"] == [9707, 11, 1879]
    enc = _assert_mask_is_assistant_turn(qwen, "Add two numbers.", RESPONSE)
    assert enc.text.startswith("<|im_start|>system\nYou are Qwen")
    assert "<think>" not in qwen.tok.get_added_vocab()  # plain text for Qwen2.5
    llama = ChatEncoder(str(real_tokenizers.llama31_dir(shared_data, tmp_path / "l31")), system_prompt="Be brief.")
    enc = _assert_mask_is_assistant_turn(llama, "Add two numbers.", RESPONSE)
    assert enc.input_ids[0] == 128000 and list(enc.input_ids).count(128000) == 1  # one BOS, from the template
    assert enc.input_ids[-1] == 128009  # the trained turn ends with <|eot_id|>


def test_mask_with_real_qwen3_template(tmp_path, shared_data):
    qwen3 = ChatEncoder(str(real_tokenizers.qwen3_dir(shared_data, tmp_path / "q3")))
    _assert_mask_is_assistant_turn(qwen3, "Add two numbers.", RESPONSE)
