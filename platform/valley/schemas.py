"""Arrow schemas of every Parquet table the platform writes: the contract between stages.

A stage reads only the columns named here and writes tables conformed to these schemas
(`storage.conform`), so a reader never has to guess at types.
"""

from __future__ import annotations

import pyarrow as pa

# One teacher response to one coding question (the unit of distillation data).
TRACES = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("question_id", pa.string(), nullable=False),
        pa.field("source", pa.string()),  # corpus/dataset the row came from (e.g. "taco", "ocr2", "demo")
        pa.field("difficulty", pa.string()),  # the corpus's raw label (TACO "MEDIUM_HARD", APPS "interview", a rating)
        pa.field("difficulty_bucket", pa.string()),  # normalised (data/difficulty.py); RQ3's easy/hard reads it
        pa.field("question", pa.string(), nullable=False),
        pa.field("response", pa.string(), nullable=False),
        pa.field("teacher", pa.string()),
        pa.field("correct", pa.bool_()),  # filled by the label stage; null = unknown
        pa.field("tests", pa.string()),  # JSON: TACO input_output {"inputs","outputs","fn_name"?} when known
        pa.field("starter_code", pa.string()),
        pa.field("think", pa.string()),  # think-tag structure: closed | unclosed | none
        pa.field("source_file", pa.string()),
        pa.field("source_row", pa.int64()),
    ]
)

# Rows the data stage refused, with the reason; nothing is dropped silently.
REJECTS = pa.schema(
    [
        pa.field("source_file", pa.string()),
        pa.field("source_row", pa.int64()),
        pa.field("field", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("raw", pa.string()),  # the offending row as JSON (truncated to a bounded size)
    ]
)

# One packed training sequence of fixed length; several documents may share it.
TOKENIZED = pa.schema(
    [
        pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("loss_mask", pa.list_(pa.int8()), nullable=False),  # 1 = assistant token that is trained on
        pa.field("position_ids", pa.list_(pa.int32()), nullable=False),  # restart at 0 for every document
        pa.field("n_docs", pa.int32()),
        pa.field("n_tokens", pa.int32()),  # real (non-padding) tokens
        pa.field("n_loss_tokens", pa.int32()),
        pa.field("trace_ids", pa.list_(pa.string())),
    ]
)

# One templated, tokenized trace of a data run (`documents/`), made once and packed into every subset that
# takes it. Ids and mask are the document as trained (cut to max_seq_len under `truncate`; empty when dropped);
# the rest is what the subset's stats and label audit need without the text.
DOCUMENTS = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("loss_mask", pa.list_(pa.int8()), nullable=False),
        pa.field("n_tokens", pa.int32()),  # as rendered, before any cut
        pa.field("dropped", pa.string()),  # null: trained; overlength | no_assistant_tokens
        pa.field("truncated", pa.bool_()),
        pa.field("loss_tokens", pa.int32()),
        pa.field("eot_in_loss", pa.bool_()),  # null: not trained, or cut (no end of turn left)
        pa.field("closed_think", pa.bool_()),
        pa.field("fenced_after_think", pa.bool_()),
        pa.field("think_tokens", pa.int32()),
    ]
)

# LiveCodeBench-style evaluation problems.
PROBLEMS = pa.schema(
    [
        pa.field("question_id", pa.string(), nullable=False),
        pa.field("question_title", pa.string()),
        pa.field("question_content", pa.string(), nullable=False),
        pa.field("platform", pa.string()),  # atcoder | codeforces | leetcode | ...
        pa.field("difficulty", pa.string()),
        pa.field("contest_id", pa.string()),
        pa.field("contest_date", pa.string()),  # ISO 8601
        pa.field("starter_code", pa.string()),
        pa.field("func_name", pa.string()),  # functional (LeetCode) problems only
        pa.field("testtype", pa.string()),  # stdin | functional
        pa.field("tests", pa.string(), nullable=False),  # JSON list of {"input","output","testtype"}
    ]
)

# One generated response of the evaluated model.
SAMPLES = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("question_id", pa.string(), nullable=False),
        pa.field("sample_idx", pa.int32(), nullable=False),
        pa.field("prompt", pa.string()),
        pa.field("response", pa.string(), nullable=False),
        pa.field("n_tokens", pa.int32()),
        pa.field("finish_reason", pa.string()),  # stop | length (max_tokens) | context (window full first)
        pa.field("model", pa.string()),
        pa.field("backend", pa.string()),
        # Set only for imported samples (`valley import`) whose file carries the harness's own verdict:
        # lcb_runner graded_list[i] / SkyThought correctness; the report puts our verdicts beside it.
        pa.field("official_pass", pa.bool_()),
        pa.field("official_detail", pa.string()),  # lcb_runner metadata[i] / SkyThought reason (JSON text)
    ]
)

# Grade of one sample against its problem's tests.
# What a grader says of one program against its tests: the same columns for samples and for traces.
_GRADE_FIELDS = [
    pa.field("verdict", pa.string(), nullable=False),
    pa.field("passed_tests", pa.int32()),
    pa.field("total_tests", pa.int32()),
    pa.field("first_failure", pa.string()),
    pa.field("runtime_s", pa.float64()),
]

VERDICTS = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("question_id", pa.string(), nullable=False),
        pa.field("sample_idx", pa.int32(), nullable=False),
        *_GRADE_FIELDS,
    ]
)

# Optional per-test detail of the grade stage (one row per test that ran; grading stops at a failure).
VERDICT_TESTS = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("question_id", pa.string(), nullable=False),
        pa.field("sample_idx", pa.int32(), nullable=False),
        pa.field("test_idx", pa.int32(), nullable=False),
        pa.field("verdict", pa.string(), nullable=False),
        pa.field("wall_s", pa.float64()),
        pa.field("cpu_s", pa.float64()),
    ]
)

# Grade of one TACO trace's final code against the trace's own tests (the label stage's verdicts).
LABEL_VERDICTS = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("question_id", pa.string(), nullable=False),
        *_GRADE_FIELDS,
    ]
)

VERDICT_VALUES = (
    "pass",
    "wrong_answer",
    "time_limit",
    "runtime_error",
    "syntax_error",
    "memory_limit",
    "no_code",
    "grader_error",  # the sandbox could not run the sample (host's fault): excluded from pass@k, reported
)

# One metric of one run of an experiment.
RESULTS = pa.schema(
    [
        pa.field("experiment", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("data_size", pa.int64()),
        pa.field("subset", pa.string()),
        pa.field("checkpoint", pa.string()),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("ci_low", pa.float64()),
        pa.field("ci_high", pa.float64()),
        pa.field("model", pa.string()),  # student model of the run (Table 1 has one block per model)
        pa.field("epoch", pa.int32()),  # set for per-epoch evaluations (valley across training steps)
    ]
)

# A key the report could not match: a sample without a verdict or problem, or a verdict without a sample.
UNMATCHED = pa.schema(
    [
        pa.field("run_id", pa.string()),
        pa.field("question_id", pa.string()),
        pa.field("sample_idx", pa.int64()),
        pa.field("kind", pa.string()),  # sample_without_verdict | verdict_without_sample | sample_without_problem
    ]
)
