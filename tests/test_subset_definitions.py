"""Subset definitions as data (data/config.SubsetSpec, data/conditions.py, data/subsets.py): `where` on any
trace column, `per_question`, `mix`, `exclusive_of` and a subset's own seed, on small tables; refusals name
the subset, the column and the counts; the old `kind` presets serialise (and so hash) as before."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest
from pydantic import ValidationError

from valley.data.conditions import response_lengths
from valley.data.config import DataConfig, SubsetSpec
from valley.data.subsets import (
    first_per_question,
    mix_counts,
    seeded_order,
    select_subsets,
    with_answer_counts,
)
from valley.errors import ConfigError

TEACHERS = ("r1", "qwq", "kat")


def _meta(n: int = 600) -> pa.Table:
    """Traces of 100 questions with 1-11 answers each, three teachers, lengths and labels."""
    rng = random.Random(5)
    rows = []
    for i in range(n):
        rows.append({"id": f"t{i:04d}", "question_id": f"q{rng.randrange(100):03d}", "source": rng.choice(["taco", "ocr"]),
                     "difficulty": None, "difficulty_bucket": rng.choice(["easy", "medium", "hard", "very_hard"]),
                     "teacher": TEACHERS[i % 3], "correct": [True, False, None][i % 3 if i % 7 else 2],
                     "think": "closed", "source_file": "f", "source_row": i,
                     "response_chars": 100 + (i * 37) % 900, "think_chars": (i * 13) % 500})
    return with_answer_counts(pa.Table.from_pylist(rows))


def _ids(t: pa.Table) -> set[str]:
    return set(t.column("id").to_pylist())


def _one(spec: SubsetSpec, meta: pa.Table | None = None) -> pa.Table:
    return select_subsets(seeded_order(meta if meta is not None else _meta(), seed=0), [spec])[spec.name]


@pytest.mark.parametrize(("where", "check"), [
    ({"teacher": "qwq"}, lambda r: r["teacher"] == "qwq"),
    ({"teacher": {"ne": "qwq"}}, lambda r: r["teacher"] != "qwq"),
    ({"teacher": {"in": ["r1", "kat"]}}, lambda r: r["teacher"] in ("r1", "kat")),
    ({"difficulty_bucket": {"not_in": ["hard", "very_hard"]}}, lambda r: r["difficulty_bucket"] in ("easy", "medium")),
    ({"response_chars": {"gt": 500}}, lambda r: r["response_chars"] > 500),
    ({"response_chars": {"ge": 500, "lt": 800}}, lambda r: 500 <= r["response_chars"] < 800),
    ({"think_chars": {"le": 100}}, lambda r: r["think_chars"] <= 100),
    ({"correct": False, "teacher": "qwq"}, lambda r: r["correct"] is False and r["teacher"] == "qwq"),
    ({"answers_per_question": {"ge": 8}}, lambda r: r["answers_per_question"] >= 8),
])
def test_each_where_operator_keeps_exactly_the_matching_traces(where, check):
    meta = _meta()
    got = _one(SubsetSpec(name="s", where=where), meta).to_pylist()
    expected = [r for r in meta.to_pylist() if check(r)]
    assert got and {r["id"] for r in got} == {r["id"] for r in expected}  # no size: the whole pool


def test_null_values_meet_no_condition():
    meta = _meta()
    unknown = {r["id"] for r in meta.to_pylist() if r["correct"] is None}
    got = _ids(_one(SubsetSpec(name="s", where={"correct": {"ne": True}}), meta))
    assert unknown and not got & unknown


def test_sizes_of_one_definition_nest_and_are_deterministic():
    meta = _meta()
    definition = {"where": {"teacher": {"in": ["r1", "qwq"]}}, "per_question": 2}
    specs = [SubsetSpec(name=f"s{n}", size=n, **definition) for n in (20, 60, 120)]
    first = select_subsets(seeded_order(meta, seed=0), specs)
    assert _ids(first["s20"]) < _ids(first["s60"]) < _ids(first["s120"])
    shuffled = meta.take(list(reversed(range(meta.num_rows))))
    again = select_subsets(seeded_order(shuffled, seed=0), specs)
    assert all(_ids(first[k]) == _ids(again[k]) for k in first)  # input order does not matter
    reseeded = select_subsets(seeded_order(meta, seed=0), [SubsetSpec(name="s60", size=60, seed=9, **definition)])
    assert _ids(reseeded["s60"]) != _ids(first["s60"])  # a subset's own seed is its own order


def test_per_question_keeps_the_first_answers_in_seeded_order():
    ordered = seeded_order(_meta(), seed=0)
    kept = first_per_question(ordered, 1).column("question_id").to_pylist()
    assert len(kept) == len(set(kept)) == len(set(ordered.column("question_id").to_pylist()))
    two = select_subsets(ordered, [SubsetSpec(name="p", per_question=2, size=150)])["p"]
    counts = {q: two.column("question_id").to_pylist().count(q) for q in set(two.column("question_id").to_pylist())}
    assert max(counts.values()) <= 2


def test_mix_splits_the_size_by_share_and_nests():
    assert mix_counts([0.7, 0.3], 10) == [7, 3] and sum(mix_counts([0.5, 0.3, 0.2], 77)) == 77
    for shares in ([0.7, 0.3], [0.5, 0.3, 0.2], [0.34, 0.33, 0.33]):
        counts = [mix_counts(shares, n) for n in range(1, 120)]
        assert all(a <= b for small, big in zip(counts, counts[1:]) for a, b in zip(small, big))  # house-monotone
    mix = {"easy": {"share": 0.7, "where": {"difficulty_bucket": {"in": ["easy", "medium"]}}},
           "hard": {"share": 0.3, "where": {"difficulty_bucket": {"in": ["hard", "very_hard"]}}}}
    got = select_subsets(seeded_order(_meta(), seed=0), [SubsetSpec(name="m50", mix=mix, size=50),
                                                         SubsetSpec(name="m100", mix=mix, size=100)])
    buckets = got["m100"].column("difficulty_bucket").to_pylist()
    assert sum(b in ("easy", "medium") for b in buckets) == 70 and len(buckets) == 100
    assert _ids(got["m50"]) < _ids(got["m100"])


def test_exclusive_arms_share_no_trace_whatever_their_order():
    meta = _meta()
    a = SubsetSpec(name="a", where={"teacher": {"in": ["r1", "qwq"]}}, size=150)
    b = SubsetSpec(name="b", exclusive_of=["a"], size=150)
    for specs in ([a, b], [b, a]):
        got = select_subsets(seeded_order(meta, seed=0), specs)
        assert not _ids(got["a"]) & _ids(got["b"]) and got["b"].num_rows == 150
    with pytest.raises(ValidationError, match="exclude each other in a loop: a -> b -> a"):
        DataConfig(inputs=["x"], tokenizer="t", subsets=[SubsetSpec(name="a", exclusive_of=["b"]),
                                                         SubsetSpec(name="b", exclusive_of=["a"])])
    with pytest.raises(ValidationError, match="exclusive_of names"):
        DataConfig(inputs=["x"], tokenizer="t", subsets=[SubsetSpec(name="a", exclusive_of=["nope"])])


def test_a_pool_smaller_than_the_size_is_refused_with_the_counts_of_each_step():
    spec = SubsetSpec(name="qwq-short", where={"teacher": "qwq", "response_chars": {"le": 300}}, per_question=1,
                      size=500)
    with pytest.raises(ConfigError) as err:
        _one(spec)
    text = str(err.value)
    assert "subset 'qwq-short' asks for 500 traces" in text and "traces: 600" in text
    assert "teacher eq 'qwq', response_chars le 300.0:" in text and "at most 1 per question:" in text
    mix = {"a": {"share": 0.5, "where": {"teacher": "qwq"}}, "b": {"share": 0.5}}
    with pytest.raises(ConfigError, match="mix part 'a'"):
        _one(SubsetSpec(name="m", mix=mix, size=500))


@pytest.mark.parametrize(("subset", "message"), [
    ({"where": {"techer": "r1"}}, "column 'techer', which traces do not have"),
    ({"where": {"teacher": {"gt": 3}}}, "where.teacher is text; `gt` compares numbers only"),
    ({"where": {"correct": "yes"}}, "where.correct is a flag column"),
    ({"where": {"response_chars": {"in": ["long"]}}}, "where.response_chars is a number column"),
    ({"mix": {"a": {"share": 0.5}, "b": {"share": 0.4}}, "size": 10}, "mix shares add up to 0.9"),
    ({"kind": "all", "where": {"teacher": "r1"}}, "kind 'all' takes no conditions"),
])
def test_a_definition_that_cannot_hold_is_refused_at_load_naming_subset_and_column(subset, message):
    with pytest.raises(ValidationError, match=message) as err:
        DataConfig(inputs=["x"], tokenizer="t", subsets=[{"name": "arm", **subset}])
    assert "subset 'arm'" in str(err.value)


def test_presets_serialise_as_before_and_definitions_round_trip():
    old = SubsetSpec(name="correct", kind="correct", size=6000, sources=["taco"])
    assert old.model_dump(mode="json") == {"name": "correct", "kind": "correct", "size": 6000, "sources": ["taco"]}
    new = SubsetSpec(name="n", where={"teacher": {"in": ["qwq"]}, "think_chars": {"le": 4000}}, per_question=4,
                     mix={"x": {"share": 1.0, "where": {"source": "taco"}}}, exclusive_of=None, seed=3, size=10)
    dumped = new.model_dump(mode="json")
    assert dumped["where"] == {"teacher": {"in": ["qwq"]}, "think_chars": {"le": 4000.0}}
    assert SubsetSpec.model_validate(dumped) == new


def test_token_counts_use_the_tokenizer_on_the_response_and_its_think_block(tmp_path):
    from valley.data.chat import load_tokenizer
    from valley.data.conditions import token_counts
    from valley.demo import build_demo_tokenizer

    tok = load_tokenizer(str(build_demo_tokenizer(tmp_path / "tok")))
    texts = ["<think>find the largest</think>print(max(a))", "print(1)", "<think>open"]
    full, think = token_counts(tok, pa.array(texts))
    assert full.to_pylist() == [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert think.to_pylist() == [len(tok("find the largest", add_special_tokens=False)["input_ids"]), 0, 0]


def test_lengths_count_characters_of_the_response_and_its_closed_think_block():
    chars, think = response_lengths(pa.array(["<think>héllo</think>print(1)", "print(2)", "<think>never closed"]))
    assert chars.to_pylist() == [28, 8, 19] and think.to_pylist() == [5, 0, 0]


def test_the_data_stage_selects_by_definition_with_derived_columns(ray_local, tmp_path):
    """On Ray: `where` on the teacher and the think block's length, `per_question`, and an exclusive arm,
    through the real ingest; the manifest records each subset, nothing else changes."""
    import json

    from valley.data.stage import run_data
    from valley.demo import build_demo_tokenizer, make_traces
    from valley.storage import Storage

    rows = make_traces(300, seed=2)
    for i, row in enumerate(rows):
        row["teacher"] = "strong" if i % 2 else "weak"
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    think = {r["id"]: r["response"].split("</think>")[0].removeprefix("<think>") for r in rows}
    closed = {r["id"] for r in rows if "<think>" in r["response"] and "</think>" in r["response"]}
    storage = Storage(str(tmp_path / "runs"))
    cfg = DataConfig(name="defs", inputs=[str(tmp_path / "t.jsonl")], tokenizer=str(build_demo_tokenizer(tmp_path / "tok")),
                     max_seq_len=1024, subsets=[
                         SubsetSpec(name="strong-short", where={"teacher": "strong", "think_chars": {"le": 400}},
                                    per_question=3, size=20),
                         SubsetSpec(name="other", exclusive_of=["strong-short"], size=100),
                         SubsetSpec(name="few-think-tokens", where={"think_tokens": {"le": 60}})])
    result = run_data(cfg, storage)
    chosen = {n: storage.read_parquet(result.stage_dir, "subsets", f"{n}.parquet") for n in ("strong-short", "other")}
    by_id = {r["id"]: r for r in rows}
    strong = [by_id[i] for i in chosen["strong-short"].column("id").to_pylist()]
    assert len(strong) == 20 and all(r["teacher"] == "strong" and (r["id"] not in closed or len(think[r["id"]]) <= 400)
                                  for r in strong)
    questions = [r["question_id"] for r in strong]
    assert max(questions.count(q) for q in questions) <= 3
    assert not _ids(chosen["strong-short"]) & _ids(chosen["other"])
    assert result.subsets["strong-short"]["rows"] == 20 and result.subsets["other"]["rows"] == 100
    from valley.data.chat import load_tokenizer

    tok = load_tokenizer(cfg.tokenizer)
    few = set(storage.read_parquet(result.stage_dir, "subsets", "few-think-tokens.parquet").column("id").to_pylist())
    expected = {i for i, text in think.items()
                if i not in closed or len(tok(text, add_special_tokens=False)["input_ids"]) <= 60}
    assert few == expected and 0 < len(few) < len(rows)


def test_per_question_at_equal_size_trades_questions_for_answers():
    """1 vs 4 answers per question at 40 traces: 40 questions once, or 10 questions four times."""
    ordered = seeded_order(_meta(), seed=0)
    rich = {"answers_per_question": {"ge": 4}}
    one = select_subsets(ordered, [SubsetSpec(name="a1", where=rich, per_question=1, size=40)])["a1"]
    four = select_subsets(ordered, [SubsetSpec(name="a4", where=rich, per_question=4, size=40)])["a4"]
    questions = four.column("question_id").to_pylist()
    assert len(set(one.column("question_id").to_pylist())) == 40
    assert len(set(questions)) == 10 and all(questions.count(q) == 4 for q in set(questions))
    bigger = select_subsets(ordered, [SubsetSpec(name="a4", where=rich, per_question=4, size=80)])["a4"]
    assert _ids(four) < _ids(bigger)
