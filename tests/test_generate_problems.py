"""LCB problem loading and filtering on the real shared rows: release, date window, difficulty,
platform, the explicit missing-value policy, and errors that name file, row and field."""

from __future__ import annotations

import base64
import json
import pickle
import zlib

import pyarrow.parquet as pq
import pytest

from valley.errors import InputError
from valley.generate.config import ProblemFilter
from valley.generate.selection import load_problems, parse_release, problems_table, release_of_file, select

VERDICTS = "lcb_verdicts/xiangww0108__Qwen2.5-Ins-7B__Scenario.codegeneration_1_0.2_eval_all.json.gz"


@pytest.fixture(scope="module")
def lcb_files(shared_data):
    return [str(shared_data / "lcb" / f"refined_test{s}.jsonl") for s in ("", "2", "3", "4", "5", "6")]


def test_release_names():
    assert release_of_file("data/test.jsonl") == 1
    assert release_of_file("refined_test5.jsonl") == 5
    assert release_of_file("problems.jsonl") is None
    assert parse_release("release_v3") == {1, 2, 3}
    assert parse_release("v4") == {4}
    assert parse_release("v2_v4") == {2, 3, 4}
    with pytest.raises(InputError, match="release_version"):
        parse_release("latest")


def test_all_shared_problems_load_with_metadata(lcb_files, shared_data):
    sel = load_problems(lcb_files, ProblemFilter(), [str(shared_data / VERDICTS)])
    assert sel.total == len(sel.problems) == 714  # the shared side of LCB release_v6 (README)
    assert all(p["contest_date"] for p in sel.problems)  # every date filled from the lcb_runner output
    by_type = {t: sum(p["testtype"] == t for p in sel.problems) for t in ("stdin", "functional")}
    assert by_type == {"stdin": 410, "functional": 304}
    assert {p["platform"] for p in sel.problems} == {"atcoder", "codeforces", "leetcode"}
    table = problems_table(sel.problems)
    assert table.num_rows == 714 and table.schema.field("tests").nullable is False


def test_release_and_date_window(lcb_files, shared_data):
    v6 = load_problems(lcb_files, ProblemFilter(release_version="v6"))
    assert len(v6.problems) == 116 and v6.dropped["release"] == 714 - 116
    cumulative = load_problems(lcb_files, ProblemFilter(release_version="release_v2"))
    assert len(cumulative.problems) == 281 + 80

    meta = [str(shared_data / VERDICTS)]
    window = ProblemFilter(start_date="2024-08-01", end_date="2024-11-30")
    sel = load_problems(lcb_files, window, meta)
    assert sel.problems and all("2024-08-01" <= p["contest_date"][:10] <= "2024-11-30" for p in sel.problems)
    assert sel.dropped["contest_date"] == 714 - len(sel.problems)


def test_missing_dates_follow_the_policy_and_are_counted(lcb_files):
    # The shared LCB rows carry no contest_date; without metadata a date filter cannot decide.
    excl = load_problems(lcb_files[-1:], ProblemFilter(start_date="2024-01-01"))
    assert excl.problems == [] and excl.missing["contest_date_exclude"] == 116
    assert excl.dropped["missing_contest_date"] == 116
    incl = load_problems(lcb_files[-1:], ProblemFilter(start_date="2024-01-01", missing="include"))
    assert len(incl.problems) == 116 and incl.missing["contest_date_include"] == 116


def test_difficulty_platform_limit(lcb_files, shared_data):
    sel = load_problems(lcb_files, ProblemFilter(difficulties=["Hard"], platforms=["leetcode"], limit=5),
                        [str(shared_data / VERDICTS)])
    assert len(sel.problems) == 5 and sel.dropped["limit"] > 0
    assert all(p["difficulty"] == "hard" and p["platform"] == "leetcode" for p in sel.problems)
    assert [p["question_id"] for p in sel.problems] == sorted(p["question_id"] for p in sel.problems)


def test_select_is_pure_and_counts_unknown_platform():
    rows = [({"question_id": "a", "platform": "unknown", "difficulty": "easy"}, 1),
            ({"question_id": "b", "platform": "atcoder", "difficulty": None}, 1)]
    sel = select(rows, ProblemFilter(platforms=["atcoder"], difficulties=["easy"], missing="include"))
    assert [p["question_id"] for p in sel.problems] == ["a", "b"]
    assert sel.missing == {"platform_include": 1, "difficulty_include": 1}


def test_real_lcb_row_with_private_tests_and_metadata(tmp_path, shared_data):
    with (shared_data / "lcb" / "refined_test6.jsonl").open(encoding="utf-8") as f:
        row = json.loads(f.readline())
    private = [{"input": "7\n", "output": "1995\n", "testtype": "stdin"}]
    row["private_test_cases"] = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(private)))).decode()
    row.update(platform="atcoder", contest_date="2025-01-04T00:00:00", metadata="{}")
    path = tmp_path / "test6.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    (problem,) = load_problems([str(path)], ProblemFilter(release_version="v6")).problems
    tests = json.loads(problem["tests"])
    assert tests[-1] == private[0] and len(tests) == len(json.loads(row["public_test_cases"])) + 1
    assert problem["contest_date"].startswith("2025-01-04")


def test_parquet_problems_table_roundtrip(tmp_path, lcb_files):
    sel = load_problems(lcb_files[-1:], ProblemFilter(limit=3))
    pq.write_table(problems_table(sel.problems), tmp_path / "p.parquet")
    again = load_problems([str(tmp_path / "p.parquet")], ProblemFilter())
    assert again.problems == sel.problems


def test_bad_rows_name_file_row_and_field(tmp_path, lcb_files):
    with open(lcb_files[-1], encoding="utf-8") as f:
        good = f.readline()
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text(good + "{not json\n", encoding="utf-8")
    with pytest.raises(InputError) as err:
        load_problems([str(bad_json)], ProblemFilter())
    assert "bad.jsonl" in str(err.value) and "row 1" in str(err.value)

    row = json.loads(good)
    del row["question_content"]
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="question_content"):
        load_problems([str(missing)], ProblemFilter())

    changed = dict(json.loads(good), question_content="something else")
    dup = tmp_path / "dup.jsonl"
    dup.write_text(good + json.dumps(changed) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="twice"):
        load_problems([str(dup)], ProblemFilter())
    same = tmp_path / "same.jsonl"
    same.write_text(good + good, encoding="utf-8")
    sel = load_problems([str(same)], ProblemFilter())
    assert len(sel.problems) == 1 and sel.dropped["duplicate_question_id"] == 1


def test_stage_refuses_an_empty_selection(storage, lcb_files):
    from valley.errors import ConfigError
    from valley.generate.config import GenerateConfig
    from valley.generate.stage import run_generate

    cfg = GenerateConfig(model="unused", problems=lcb_files[-1:], filters={"release_version": "v1"})
    with pytest.raises(ConfigError, match="no problems"):
        run_generate(cfg, storage)


def test_job_configs_validate_and_pool_is_not_hashed():
    from pathlib import Path

    from valley import config
    from valley.errors import ConfigError
    from valley.generate.config import GenerateConfig

    configs = sorted((Path(__file__).resolve().parents[1] / "jobs" / "configs").glob("generate_*.yaml"))
    assert len(configs) >= 3
    for path in configs:
        cfg = config.load(GenerateConfig, path)
        assert cfg.max_tokens >= 64
    base = config.load(GenerateConfig, configs[0])
    wider = config.load(GenerateConfig, configs[0], ["pool.replicas=16", "pool.mode=serve", "part_size=7"])
    assert wider.config_hash() == base.config_hash()
    assert config.load(GenerateConfig, configs[0], ["temperature=0.7"]).config_hash() != base.config_hash()
    with pytest.raises(ConfigError, match="pool.replicass"):
        config.load(GenerateConfig, configs[0], ["pool.replicass=2"])
