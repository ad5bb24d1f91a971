"""Metrics: unbiased pass@k, bootstrap CIs over problems, join/validation, and run metrics."""

from __future__ import annotations

import itertools
from math import comb

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from fixtures import lcb_run_tables
from valley.errors import InputError
from valley.metrics import bootstrap_ratio, compute_run_metrics, join_run, pass_at_k


# ---- pass@k -------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,c,k", [(10, 3, 1), (10, 3, 5), (20, 0, 4), (7, 7, 3), (50, 12, 10), (5, 1, 5)])
def test_pass_at_k_matches_closed_form(n, c, k):
    expected = 1.0 - comb(n - c, k) / comb(n, k)
    assert pass_at_k(n, c, k)[0] == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_pass_at_k_matches_brute_force_subsets():
    # Enumerate every k-subset of n labelled samples and count those holding at least one pass.
    for n, c, k in [(6, 2, 3), (6, 0, 2), (5, 4, 2), (8, 3, 1), (7, 1, 4)]:
        outcomes = [True] * c + [False] * (n - c)
        subsets = list(itertools.combinations(range(n), k))
        brute = sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)
        assert pass_at_k(n, c, k)[0] == pytest.approx(brute, abs=1e-12)


def test_pass_at_k_vectorised_and_k1_is_fraction():
    n = np.array([10, 10, 4, 20])
    c = np.array([0, 10, 1, 5])
    np.testing.assert_allclose(pass_at_k(n, c, 1), c / n)
    np.testing.assert_allclose(pass_at_k(n, c, 4), [1 - comb(ni - ci, 4) / comb(ni, 4) for ni, ci in zip(n, c, strict=True)])


def test_pass_at_k_rejects_too_few_samples_and_bad_counts():
    with pytest.raises(ValueError, match="at least 5 samples"):
        pass_at_k([4, 10], [1, 2], 5)
    with pytest.raises(ValueError, match=r"\[0, n\]"):
        pass_at_k([4], [5], 1)


# ---- bootstrap ----------------------------------------------------------------------------------
def test_bootstrap_ci_contains_point_and_shrinks_with_more_problems():
    rng = np.random.default_rng(1)
    widths = []
    for p in (40, 400, 4000):
        vals = rng.binomial(10, 0.3, size=p) / 10
        point, lo, hi = bootstrap_ratio(vals, n_boot=800, seed=0)
        assert point == pytest.approx(vals.mean())
        assert lo <= point <= hi
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    # Standard error shrinks like 1/sqrt(P): 10x problems -> roughly 1/3.16 of the width.
    assert widths[0] / widths[2] == pytest.approx(10, rel=0.35)


def test_bootstrap_ratio_weights_by_denominator_and_is_seeded():
    num = np.array([1.0, 9.0, 0.0])
    den = np.array([2.0, 10.0, 4.0])
    point, lo, hi = bootstrap_ratio(num, den, n_boot=300, seed=7)
    assert point == pytest.approx(10 / 16)
    assert (point, lo, hi) == bootstrap_ratio(num, den, n_boot=300, seed=7)
    assert bootstrap_ratio(num, den, n_boot=0) == (point, point, point)


# ---- synthetic run tables -----------------------------------------------------------------------
def _tables(n_problems=6, n_samples=4, pass_of=None, verdict_of=None):
    problems = pa.table(
        {
            "question_id": [f"q{i}" for i in range(n_problems)],
            "question_content": ["..."] * n_problems,
            "difficulty": ["easy", "Medium ", "hard"] * (n_problems // 3),
            "platform": ["leetcode", "atcoder"] * (n_problems // 2),
            "contest_date": ["2024-08-03T00:00:00", "2024-11-20T00:00:00", "2025-01-05T00:00:00"] * (n_problems // 3),
            "tests": ["[]"] * n_problems,
        }
    )
    s_rows, v_rows = [], []
    for i in range(n_problems):
        for j in range(n_samples):
            passed = pass_of(i, j) if pass_of else (j < i % (n_samples + 1))
            s_rows.append(
                {
                    "run_id": "r",
                    "question_id": f"q{i}",
                    "sample_idx": j,
                    # sample 0: leading newline then <think>; sample 1: no tag; others: tag
                    "response": ("\n<think>x</think>code" if j == 0 else "code" if j == 1 else "<think>y</think>"),
                    "n_tokens": 100 * (j + 1),
                    "finish_reason": "length" if j == 3 else "stop",
                }
            )
            verdict = verdict_of(i, j) if verdict_of else ("pass" if passed else "wrong_answer")
            v_rows.append({"run_id": "r", "question_id": f"q{i}", "sample_idx": j, "verdict": verdict})
    return pa.Table.from_pylist(s_rows), pa.Table.from_pylist(v_rows), problems


def _by_metric(rows):
    return {r["metric"]: r for r in rows}


def test_run_metrics_values_on_a_hand_built_run():
    samples, verdicts, problems = _tables()
    rows = _by_metric(
        compute_run_metrics(samples, verdicts, problems, max_tokens=250, n_boot=200, seed=0, ks=(1, 4, 5))
    )
    # problem i passes min(i % 5, 4) of 4 samples
    fracs = np.array([min(i % 5, 4) / 4 for i in range(6)])
    assert rows["pass@1"]["value"] == pytest.approx(fracs.mean())
    assert rows["pass@1"]["ci_low"] <= rows["pass@1"]["value"] <= rows["pass@1"]["ci_high"]
    # completed: finish "stop" and n_tokens <= 250 -> samples 0 and 1 only (sample 2 has 300 tokens)
    assert rows["completion_rate"]["value"] == pytest.approx(0.5)
    # think: samples 0 (after lstrip), 2, 3
    assert rows["think_rate"]["value"] == pytest.approx(0.75)
    assert rows["n_problems"]["value"] == 6 and rows["n_samples"]["value"] == 24
    # breakdowns: difficulty normalised ("Medium " -> medium), platforms, quarter windows
    assert rows["pass@1/difficulty=easy"]["value"] == pytest.approx(np.mean([fracs[0], fracs[3]]))
    assert rows["pass@1/difficulty=medium"]["value"] == pytest.approx(np.mean([fracs[1], fracs[4]]))
    assert rows["n_problems/platform=atcoder"]["value"] == 3
    assert rows["pass@1/window=2024Q3"]["value"] == pytest.approx(np.mean([fracs[0], fracs[3]]))
    assert rows["pass@1/window=2025Q1"]["value"] == pytest.approx(np.mean([fracs[2], fracs[5]]))
    # verdict shares sum to one; pass share equals pass@1 with equal samples per problem
    shares = [r["value"] for m, r in rows.items() if m.startswith("verdict_share/")]
    assert sum(shares) == pytest.approx(1.0)
    assert rows["verdict_share/pass"]["value"] == pytest.approx(rows["pass@1"]["value"])
    assert rows["pass@4"]["value"] == pytest.approx(np.mean(fracs > 0))
    assert "pass@5" not in rows  # only 4 samples per problem: no unbiased pass@5


def test_explicit_date_windows():
    samples, verdicts, problems = _tables()
    rows = _by_metric(
        compute_run_metrics(samples, verdicts, problems, max_tokens=10_000, n_boot=0, seed=0,
                            date_windows=[("2024-08-01", "2025-01-01")])
    )
    assert rows["n_problems/window=2024-08-01..2025-01-01"]["value"] == 4
    assert rows["n_problems/window=other"]["value"] == 2


def test_unmatched_rows_are_counted_not_dropped():
    samples, verdicts, problems = _tables()
    verdicts = verdicts.slice(2)  # q0 samples 0,1 lose their verdicts
    extra = pa.Table.from_pylist([{"run_id": "r", "question_id": "q9", "sample_idx": 0, "verdict": "pass"}])
    verdicts = pa.concat_tables([verdicts, extra])
    joined = join_run(samples, verdicts, problems, max_tokens=1000)
    assert joined.n_ungraded == 2
    assert joined.orphan_verdicts["question_id"].to_list() == ["q9"]
    rows = _by_metric(compute_run_metrics(samples, verdicts, problems, max_tokens=1000, n_boot=0, seed=0))
    assert rows["n_ungraded"]["value"] == 2
    assert rows["n_orphan_verdicts"]["value"] == 1
    assert rows["verdict_share/ungraded"]["value"] == pytest.approx(2 / 24)
    assert rows["n_samples"]["value"] == 24


def test_bad_verdict_names_file_row_and_field():
    samples, verdicts, problems = _tables()
    verdicts = verdicts.set_column(3, "verdict", pa.array(["pass"] * 5 + ["accepted"] + ["pass"] * 18))
    with pytest.raises(InputError) as err:
        compute_run_metrics(samples, verdicts, problems, max_tokens=10, n_boot=0, seed=0,
                            sources={"verdicts": "runs/grade/v.parquet"})
    assert err.value.row == 5 and err.value.field == "verdict" and err.value.file == "runs/grade/v.parquet"
    assert "accepted" in str(err.value)


def test_duplicate_sample_and_missing_column_are_errors():
    samples, verdicts, problems = _tables()
    dup = pa.concat_tables([samples, samples.slice(3, 1)])
    with pytest.raises(InputError, match="repeated key") as err:
        compute_run_metrics(dup, verdicts, problems, max_tokens=10, n_boot=0, seed=0)
    assert err.value.row == 3
    with pytest.raises(InputError, match="finish_reason"):
        compute_run_metrics(samples.drop_columns(["finish_reason"]), verdicts, problems, max_tokens=10, n_boot=0, seed=0)


# ---- real data: LiveCodeBench's own grading of Llama-3.1-8B-Instruct (n=10) --------------------
def test_pass_at_1_matches_livecodebench_on_real_verdicts(shared_data):
    path = shared_data / "lcb_verdicts" / "gu-ni__output_test6__LLama3.1-8b-Ins__Scenario.codegeneration_10_0.2_eval_all.json.gz"
    records, samples, verdicts, problems = lcb_run_tables(path)
    rows = _by_metric(compute_run_metrics(samples, verdicts, problems, max_tokens=32768, n_boot=300, seed=0))
    # lcb_runner stores each problem's pass@1; ours must agree overall and per difficulty.
    assert rows["pass@1"]["value"] == pytest.approx(np.mean([r["pass@1"] for r in records]))
    for diff in ("easy", "medium", "hard"):
        expected = np.mean([r["pass@1"] for r in records if r["difficulty"] == diff])
        assert rows[f"pass@1/difficulty={diff}"]["value"] == pytest.approx(expected)
    # pass@10 with n=10 is "any sample passed"
    assert rows["pass@10"]["value"] == pytest.approx(np.mean([any(r["graded_list"]) for r in records]))
    assert rows["think_rate"]["value"] == 0.0  # an instruct model without distillation never opens <think>
    frame = pl.from_arrow(verdicts)
    assert rows["verdict_share/wrong_answer"]["value"] == pytest.approx((frame["verdict"] == "wrong_answer").mean())


def test_problems_without_optional_columns_fall_into_unknown():
    samples, verdicts, problems = _tables()
    rows = _by_metric(
        compute_run_metrics(samples, verdicts, problems.select(["question_id"]), max_tokens=1000, n_boot=0, seed=0)
    )
    assert rows["n_problems/difficulty=unknown"]["value"] == 6
    assert rows["n_problems/window=unknown"]["value"] == 6
    missing = problems.slice(0, 3)  # q3..q5 are not in the problems table
    rows = _by_metric(compute_run_metrics(samples, verdicts, missing, max_tokens=1000, n_boot=0, seed=0))
    assert rows["n_samples_without_problem"]["value"] == 12
    assert rows["n_problems/platform=unknown"]["value"] == 3


def test_think_tag_detection_matches_python_lstrip():
    responses = ["<think>a", "  \n\t<think>b", "\u00a0\u2003<think>c", "x<think>", "<thinking>", "", " <THINK>", "\r\n<think>"]
    samples = pa.table({"question_id": ["q"] * len(responses), "sample_idx": list(range(len(responses))),
                        "response": responses, "finish_reason": ["stop"] * len(responses)})
    verdicts = pa.table({"question_id": ["q"] * len(responses), "sample_idx": list(range(len(responses))),
                         "verdict": ["pass"] * len(responses)})
    joined = join_run(samples, verdicts, pa.table({"question_id": ["q"]}), max_tokens=10)
    assert joined.samples.sort("sample_idx")["think"].to_list() == [r.lstrip().startswith("<think>") for r in responses]


def test_missing_finish_reason_is_unknown_not_incomplete():
    samples, verdicts, problems = _tables()
    # Samples 1 (stop) and 3 (length) lose their finish reason, as in imported lcb_runner files.
    reasons = [None if j in (1, 3) else r for j, r in zip(samples["sample_idx"].to_pylist(),
                                                         samples["finish_reason"].to_pylist(), strict=True)]
    samples = samples.set_column(samples.schema.get_field_index("finish_reason"), "finish_reason",
                                 pa.array(reasons, pa.string()))
    rows = _by_metric(compute_run_metrics(samples, verdicts, problems, max_tokens=250, n_boot=0, seed=0))
    # Known: samples 0 (stop, 100 tokens: complete) and 2 (stop, 300 tokens: over budget) -> 1 of 2.
    assert rows["completion_rate"]["value"] == pytest.approx(0.5)
    none = samples.set_column(samples.schema.get_field_index("finish_reason"), "finish_reason",
                              pa.nulls(samples.num_rows, pa.string()))
    rows = _by_metric(compute_run_metrics(none, verdicts, problems, max_tokens=250, n_boot=0, seed=0))
    assert np.isnan(rows["completion_rate"]["value"])
    assert rows["pass@1"]["value"] == pytest.approx(np.mean([min(i % 5, 4) / 4 for i in range(6)]))
