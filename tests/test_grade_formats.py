"""Test formats: real LCB rows, LCB's private-test encoding, TACO input_output, comparison rules."""

import base64
import json
import pickle
import zlib

import pytest

from valley import schemas
from valley.errors import InputError
from valley.grade.compare import compare_stdout, compare_stdout_taco, compare_value
from valley.problems import (
    decode_private_tests,
    func_name_from_starter,
    load_lcb_problems,
    problem_from_lcb_row,
    spec_from_problem,
    spec_from_taco,
)


@pytest.fixture(scope="module")
def lcb_files(shared_data):
    return sorted((shared_data / "lcb").glob("*.jsonl"))


def test_load_real_lcb_problems(lcb_files):
    table = load_lcb_problems(lcb_files)
    assert table.schema.equals(schemas.PROBLEMS, check_metadata=False)
    rows = table.to_pylist()
    assert len(rows) == 714
    kinds = [r["testtype"] for r in rows]
    assert kinds.count("stdin") == 410 and kinds.count("functional") == 304
    assert sum(len(json.loads(r["tests"])) for r in rows) == 1854
    fn = next(r for r in rows if r["question_id"] == "2866")  # a LeetCode problem of release_v1
    assert fn["platform"] == "leetcode" and fn["func_name"] and f"def {fn['func_name']}(" in fn["starter_code"]
    cf = next(r for r in rows if r["question_id"] == "1873_A")
    assert cf["platform"] == "codeforces" and cf["func_name"] is None
    assert next(r for r in rows if r["question_id"].startswith("abc"))["platform"] == "atcoder"


def _lcb_encode(tests: list[dict]) -> str:
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode("utf-8")


def test_private_tests_both_encodings_are_decoded():
    tests = [{"input": "1\n", "output": "2\n", "testtype": "stdin"}]
    assert decode_private_tests(_lcb_encode(tests)) == tests
    assert decode_private_tests(json.dumps(tests)) == tests
    row = {"question_id": "abc001_a", "question_content": "q", "public_test_cases": json.dumps(tests),
           "private_test_cases": _lcb_encode(tests * 3), "metadata": "{}"}
    prob = problem_from_lcb_row(row)
    assert len(json.loads(prob["tests"])) == 4 and prob["platform"] == "atcoder"


def test_functional_row_uses_metadata_func_name():
    row = {"question_id": "9", "question_content": "q", "starter_code": "class Solution:\n    def a(self, x): ...",
           "public_test_cases": json.dumps([{"input": "1", "output": "2", "testtype": "functional"}]),
           "metadata": json.dumps({"func_name": "b"})}
    prob = problem_from_lcb_row(row)
    assert prob["func_name"] == "b" and prob["testtype"] == "functional"
    spec = spec_from_problem(prob)
    assert spec.mode == "functional" and spec.fn_name == "b" and spec.inputs == ("1",)


def test_bad_rows_name_file_row_and_field():
    with pytest.raises(InputError, match=r"file f\.jsonl, row 3, field 'public_test_cases'"):
        problem_from_lcb_row({"question_id": "x", "question_content": "q", "public_test_cases": "[{"},
                             file="f.jsonl", row_idx=3)
    with pytest.raises(InputError, match="private_test_cases"):
        problem_from_lcb_row({"question_id": "x", "question_content": "q", "public_test_cases": "[]",
                              "private_test_cases": "!!notbase64"}, file="f", row_idx=0)
    with pytest.raises(InputError, match="starter_code"):
        problem_from_lcb_row({"question_id": "x", "question_content": "q", "starter_code": "",
                              "public_test_cases": json.dumps([{"input": "1", "output": "1",
                                                                "testtype": "functional"}])})


def test_bad_jsonl_line_is_located(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"question_id": "a", "question_content": "q", "public_test_cases": "[]"}\n{oops\n')
    with pytest.raises(InputError, match="row 1"):
        load_lcb_problems(p)


def test_func_name_from_starter():
    assert func_name_from_starter("class Solution:\n    def maxSum(self, nums: List[int]) -> int:\n") == "maxSum"
    assert func_name_from_starter("") is None


def test_taco_stdin_and_call_based():
    s = spec_from_taco(json.dumps({"inputs": ["1 2\n", ["3 4", "5"]], "outputs": ["3\n", ["7", "5"]]}))
    assert s.mode == "stdin" and s.inputs == ("1 2\n", "3 4\n5") and s.outputs[1] == "7\n5" and s.compare == "taco"
    c = spec_from_taco({"fn_name": "add", "inputs": [[1, [2, 3]]], "outputs": [[6]]})
    assert c.mode == "functional" and c.fn_name == "add" and c.inputs == ("1\n[2, 3]",) and c.outputs == ("[6]",)
    with pytest.raises(InputError, match="row 7, field 'tests'"):
        spec_from_taco('{"inputs": [1]}', file="t.parquet", row=7)
    with pytest.raises(InputError, match="1 inputs but 0 outputs"):
        spec_from_taco({"inputs": ["1"], "outputs": []})


def test_compare_stdout_lcb_rules():
    assert compare_stdout("1 2\n3\n\n", "1 2\n3")[0]  # trailing blank lines stripped
    assert compare_stdout("  1   2 \n", "1 2")[0]  # whitespace-tolerant within the line
    assert compare_stdout("1.0 2.50\n", "1 2.5\n")[0]  # Decimal-equal numbers
    assert not compare_stdout("0.30000000000000004", "0.3")[0]  # no float tolerance in LCB
    ok, why = compare_stdout("1\n2", "1")
    assert not ok and "mismatched output length" in why
    ok, why = compare_stdout("YES\nNO", "YES\nYES")
    assert not ok and "line 1" in why
    assert not compare_stdout("yes", "YES")[0]


def test_compare_taco_and_functional():
    assert compare_stdout_taco("0.30000000000000004", "0.3")[0]
    assert compare_stdout_taco("1 2\n3", "1\n2 3")[0]
    assert compare_value("[1, 2]", "[1, 2]")[0]
    assert not compare_value("[1, 2]", "[[1, 2]]")[0]
    assert compare_value("[1, 2]", "[[1, 2]]", taco=True)[0]
    assert compare_value("true", "true")[0] and not compare_value("1.5", "2")[0]


def test_functional_tests_must_be_json():
    row = {"question_id": "q", "testtype": "functional", "func_name": "f",
           "tests": json.dumps([{"input": "[1]\n2", "output": "True", "testtype": "functional"}])}
    with pytest.raises(InputError, match="output is not JSON"):
        spec_from_problem(row)
