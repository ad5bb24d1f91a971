"""Decontamination: planted duplicates and near-duplicates of evaluation problems are found (n-gram, title,
URL), clean questions are not flagged, per-subset reports count them, `drop` removes them as rejects."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from valley import schemas
from valley.decontam.config import DecontamConfig
from valley.decontam.index import EvalProblem, build_index
from valley.decontam.match import MatchRule, match_question
from valley.decontam.stage import run_decontam
from valley.decontam.text import ngram_hashes, normalize, normalize_title, url_keys
from valley.errors import InputError

WORDS = ["array", "integer", "string", "query", "answer", "minimum", "maximum", "graph", "tree", "node", "edge",
         "path", "cost", "value", "index", "pair", "sum", "product", "prefix", "suffix", "window", "segment",
         "color", "grid", "cell", "row", "column", "move", "step", "turn", "player", "game"]
BOILERPLATE = ("The first line contains a single integer t the number of test cases. "
               "Each test case consists of a single line containing an integer n. "
               "For each test case print the answer on a separate line.")


def statement(rng: random.Random, n_words: int = 160) -> str:
    """A random problem statement (random words: no accidental 13-gram overlap) plus shared boilerplate."""
    story = " ".join(rng.choice(WORDS) + (str(rng.randint(0, 99)) if rng.random() < 0.3 else "")
                     for _ in range(n_words))
    return f"{story}. {BOILERPLATE}"


def near_duplicate(text: str, rng: random.Random, every: int = 25) -> str:
    """Reformatted (case, punctuation, LaTeX, line breaks) with one word in `every` replaced."""
    words = text.split()
    for i in range(0, len(words), every):
        words[i] = "changed"
    out = " ".join(words).upper().replace(". ", ".\n\n")
    return out.replace(" INTEGER N", " integer $n$")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    rng = random.Random(3)
    root = tmp_path_factory.mktemp("decontam")
    problems = []
    for i in range(12):
        platform = ("codeforces", "atcoder", "leetcode")[i % 3]
        qid = {"codeforces": f"{1800 + i}_A", "atcoder": f"abc{300 + i}_a", "leetcode": str(3000 + i)}[platform]
        title = {"codeforces": f"A. Distinct Title Number {i}", "atcoder": f"Special Title {i}",
                 "leetcode": f"special-slug-number-{i}"}[platform]
        problems.append({"question_id": qid, "question_title": title, "question_content": statement(rng),
                         "platform": platform, "public_test_cases": "[]"})
    problems_path = root / "problems.jsonl"
    problems_path.write_text("\n".join(json.dumps(p) for p in problems) + "\n")
    traces, expect = [], {}

    def add(question: str, want: set[str] | None, qid: str | None = None):
        tid = f"t{len(traces)}"
        traces.append({"id": tid, "question_id": qid or f"q{len(traces)}", "question": question, "response": "r",
                       "source_file": "corpus.jsonl", "source_row": len(traces)})
        if want:
            expect[tid] = want

    add(problems[0]["question_content"], {problems[0]["question_id"]})  # exact copy
    add(near_duplicate(problems[1]["question_content"], rng), {problems[1]["question_id"]})  # near-duplicate
    add("Solve this task.\n\n" + problems[2]["question_content"] + "\n\nWrite Python.",
        {problems[2]["question_id"]})  # embedded in a longer prompt
    words = problems[3]["question_content"].split()  # the first 40% of the statement only
    add(" ".join(words[: int(len(words) * 0.4)]), {problems[3]["question_id"]})
    add(f"# Distinct Title Number 6 (Codeforces Round 900 (Div. 2), 2023)\n\n{statement(rng)}",
        {problems[6]["question_id"]})  # same title, other words
    add(f"From https://atcoder.jp/contests/abc304/tasks/abc304_a : {statement(rng)}",
        {problems[4]["question_id"]})  # URL of the problem
    add(f"See https://leetcode.com/problems/special-slug-number-5/ {statement(rng)}", {problems[5]["question_id"]})
    add(problems[7]["question_content"], {problems[7]["question_id"]}, qid="q-dup")  # two traces of one question
    add(problems[7]["question_content"], {problems[7]["question_id"]}, qid="q-dup")
    for _ in range(40):  # clean: random statements sharing the boilerplate with every problem
        add(statement(rng), None)
    add("Title only, no statement", None)
    add(BOILERPLATE, None)
    add(" ".join(problems[8]["question_content"].split()[:20]), None)  # 20 words: well under 20% of it
    add(f"# Special Title 99\n\n{statement(rng)}", None)  # another title
    data_dir = root / "data-run"
    (data_dir / "traces").mkdir(parents=True)
    (data_dir / "subsets").mkdir()
    table = pa.Table.from_pylist(traces)
    pq.write_table(table.slice(0, 30), data_dir / "traces" / "part-0.parquet")
    pq.write_table(table.slice(30), data_dir / "traces" / "part-1.parquet")
    ids = [t["id"] for t in traces]
    pq.write_table(pa.table({"id": ids[:5]}), data_dir / "subsets" / "small.parquet")
    pq.write_table(pa.table({"id": ids[5:]}), data_dir / "subsets" / "rest.parquet")
    return {"problems": str(problems_path), "data_dir": str(data_dir), "expect": expect, "n": len(traces)}


def test_normalisation_and_keys():
    assert normalize("Given $N$ (1 <= N <= 10^5),\n  print  N!") == "given n 1 n 10 5 print n"
    assert np.array_equal(ngram_hashes("A b, c d!", 3), ngram_hashes("a  B c\nD", 3))
    assert len(ngram_hashes("too short", 13)) == 0
    assert normalize_title("# A. Short Sort (Codeforces Round 898 (Div. 4), 2023)") == normalize_title("A. Short Sort")
    assert normalize_title("Bouquet (Easy Version)") != normalize_title("Bouquet (Hard Version)")
    assert url_keys("https://codeforces.com/contest/1873/problem/a") == {"codeforces:1873_A"}


def test_boilerplate_ngrams_are_not_evidence():
    rng = random.Random(0)
    probs = [EvalProblem(f"p{i}", statement(rng)) for i in range(5)]
    index = build_index(probs, n=13, max_problem_frequency=3, min_title_words=2)
    assert index.stats["boilerplate_ngrams"] > 0
    rule = MatchRule()
    assert match_question(index, rule, BOILERPLATE + " " + statement(rng)) == []
    (m,) = match_question(index, rule, probs[2].question_content)
    assert (m.problem, m.kinds, m.overlap) == (2, ["ngram"], 1.0)


def test_planted_duplicates_found_and_clean_questions_not_flagged(planted, storage, ray_local):
    cfg = DecontamConfig(traces=planted["data_dir"], problems=[planted["problems"]], batch_size=16)
    res = run_decontam(cfg, storage)
    matches = pq.read_table(storage.path(res.matches)).to_pylist()
    found: dict[str, set[str]] = {}
    for m in matches:
        found.setdefault(m["id"], set()).add(m["eval_question_id"])
    assert found == planted["expect"]
    kinds = {m["id"]: set(m["kinds"].split(",")) for m in matches}
    assert kinds["t1"] == {"ngram"} and kinds["t4"] == {"title"} and kinds["t5"] == kinds["t6"] == {"url"}
    assert res.n_traces == planted["n"] and res.n_contaminated == len(planted["expect"])
    assert res.subsets["small"]["contaminated"] == 5 and res.subsets["small"]["traces"] == 5
    assert res.subsets["rest"]["contaminated"] == len(planted["expect"]) - 5
    report = storage.read_json(res.report_json)
    rest = next(r for r in report["subsets"] if r["subset"] == "rest")
    dup_pair = next(p for p in rest["pairs"] if p["question_id"] == "q-dup")
    assert dup_pair["traces"] == 2 and dup_pair["overlap"] == 1.0
    assert "| small | 5 | 5 | 100.00% |" in storage.read_text(res.report_md)
    assert run_decontam(cfg, storage).skipped


def test_drop_writes_clean_traces_and_rejects(planted, storage, ray_local):
    cfg = DecontamConfig(traces=planted["data_dir"], problems=[planted["problems"]], drop=True, concurrency=1)
    res = run_decontam(cfg, storage)
    clean = pq.read_table(storage.path(res.traces))
    assert clean.num_rows == planted["n"] - len(planted["expect"])
    assert not set(clean.column("id").to_pylist()) & set(planted["expect"])
    assert "response" in clean.column_names  # whole rows, not just the matched columns
    rejects = pq.read_table(storage.path(res.rejects))
    assert rejects.schema.names == schemas.REJECTS.names and rejects.num_rows == len(planted["expect"])
    row = next(r for r in rejects.to_pylist() if json.loads(r["raw"])["id"] == "t0")
    assert (row["source_file"], row["source_row"], row["field"], row["reason"]) == \
        ("corpus.jsonl", 0, "question", "contaminated")


def test_bad_rows_are_named(tmp_path, storage, planted, ray_local):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "question": ["fine", None], "source_file": ["f.jsonl"] * 2,
                             "source_row": [0, 1]}), path)
    with pytest.raises(InputError, match=r"file f.jsonl, row 1, field 'question'"):
        run_decontam(DecontamConfig(traces=str(path), problems=[planted["problems"]]), storage)
    with pytest.raises(InputError, match="field 'prompt'"):
        run_decontam(DecontamConfig(traces=str(path), problems=[planted["problems"]], question_field="prompt"),
                     storage)
