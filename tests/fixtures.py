"""Helpers shared by several test modules (pytest fixtures built on them live in conftest.py).

Test modules import from here, never from one another, so each can change its own private helpers freely.

- the tiny training student (demo tokenizer, hidden 32, 2 layers) and tokenized demo documents;
- `build_data_dir`: a stand-in for the data stage's output, so train tests do not depend on the data stage;
- the generate stage tests' config on four real LCB problems;
- the report tests' synthetic runs, and LiveCodeBench's own graded outputs as valley tables.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from valley import schemas

if TYPE_CHECKING:
    from valley.generate.config import GenerateConfig
    from valley.report.config import ReportConfig
    from valley.storage import Storage


# ---- the tiny training student and its documents ---------------------------------------------------
def build_tiny_train_model(root: Path) -> tuple[Path, Path]:
    """The demo tokenizer (`root/tok`) and a random Qwen2 on it with hidden size 32 and 2 layers
    (`root/model`): small enough for two-worker ZeRO-3 runs on CPU. Same seed, same weights every time."""
    from valley.demo import build_demo_tokenizer, build_tiny_model

    tok = build_demo_tokenizer(root / "tok")
    return tok, build_tiny_model(root / "model", tok, hidden_size=32, num_layers=2)


def tokenize_doc(tok: Any, question: str, response: str) -> tuple[list[int], list[int]]:
    """Chat-templated ids and a loss mask that is 1 on the assistant turn only."""
    def ids(messages, gen):
        out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    user = [{"role": "user", "content": question}]
    prompt = ids(user, True)
    full = ids(user + [{"role": "assistant", "content": response}], False)
    assert full[: len(prompt)] == prompt
    return full, [0] * len(prompt) + [1] * (len(full) - len(prompt))


def pack(docs: list[dict], seq_len: int, pad_id: int) -> list[dict]:
    """First-fit in order (the data stage uses best-fit; any packing is valid input)."""
    rows: list[dict] = []
    for d in docs:
        n = len(d["input_ids"])
        row = next((r for r in rows if len(r["input_ids"]) + n <= seq_len), None)
        if row is None:
            row = {"input_ids": [], "loss_mask": [], "position_ids": [], "trace_ids": [], "n_tokens": 0}
            rows.append(row)
        row["input_ids"] += d["input_ids"]
        row["loss_mask"] += d["loss_mask"]
        row["position_ids"] += list(range(n))
        row["trace_ids"].append(d["id"])
        row["n_tokens"] += n
    for r in rows:
        pad = seq_len - len(r["input_ids"])
        r["input_ids"] += [pad_id] * pad
        r["loss_mask"] += [0] * pad
        r["position_ids"] += list(range(pad))
        r["n_docs"] = len(r["trace_ids"])
        r["n_loss_tokens"] = sum(r["loss_mask"])
    return rows


def statement(question: str) -> str:
    """The question's first paragraph: the whole LCB-format question (examples, format) is 120-200 tokens,
    so documents cut to a few hundred tokens would keep no response token to train on."""
    return question.split("\n\n")[0]


def tiny_model_and_docs(root: Path, max_tokens: int) -> tuple[Path, Any, list[dict]]:
    """The tiny training student, its tokenizer and nine tokenized demo documents cut to `max_tokens`."""
    from transformers import AutoTokenizer

    from valley.demo import make_traces

    tok_dir, model_dir = build_tiny_train_model(root)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    docs = []
    for t in make_traces(9, seed=3):
        ids, mask = tokenize_doc(tok, statement(t["question"]), t["response"])
        docs.append({"id": t["id"], "input_ids": ids[:max_tokens], "loss_mask": mask[:max_tokens]})
    return model_dir, tok, docs


def build_data_dir(storage: Storage, tokenizer_dir: Path, *, n_traces: int, seq_len: int, seed: int = 0,
                   name: str = "data/test-0", n_files: int = 2, packed: bool = True, max_doc: int | None = None
                   ) -> tuple[str, list[dict]]:
    """What the data stage writes — `tokenized/<subset>/part-*.parquet` (schemas.TOKENIZED), `tokenizer/`,
    `manifest.json`, `_SUCCESS` — from the demo traces; also returns the unpacked documents for parity checks.

    Docs are cut to `max_doc` tokens (default seq_len // 3) so that rows hold several documents.
    """
    from transformers import AutoTokenizer

    from valley.demo import make_traces

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    docs = []
    for t in make_traces(n_traces, seed):
        ids, mask = tokenize_doc(tok, statement(t["question"]), t["response"])
        cut = max_doc or seq_len // 3
        docs.append({"id": t["id"], "input_ids": ids[:cut], "loss_mask": mask[:cut]})
    if packed:
        rows = pack(docs, seq_len, tok.pad_token_id)
    else:
        rows = [{"input_ids": d["input_ids"], "loss_mask": d["loss_mask"], "position_ids": list(range(len(d["input_ids"]))),
                 "trace_ids": [d["id"]], "n_tokens": len(d["input_ids"]), "n_docs": 1,
                 "n_loss_tokens": sum(d["loss_mask"])} for d in docs]
    per = -(-len(rows) // n_files)
    for i in range(n_files):
        part = rows[i * per:(i + 1) * per]
        table = pa.Table.from_pylist(part, schema=schemas.TOKENIZED)
        storage.write_parquet(table, name, "tokenized", "all", f"part-{i:05d}.parquet", schema=schemas.TOKENIZED)
    for p in sorted(Path(tokenizer_dir).iterdir()):
        storage.write_bytes(p.read_bytes(), name, "tokenizer", p.name)
    storage.write_json({"seq_len": seq_len, "packing": "pack" if packed else "none",
                        "subsets": {"all": {"rows": len(rows), "docs": len(docs)}}}, name, "manifest.json")
    storage.mark_success(name, "test")
    return name, docs


# ---- the generate stage on four real LCB problems ----------------------------------------------------
# two stdin (AtCoder) and two functional (LeetCode) problems of LCB release v6, shared side
GENERATE_QIDS = ["abc387_a", "abc387_b", "3674", "3677"]


def tiny_generate_config(tiny_model: str, lcb_file: str, name: str, **pool: Any) -> GenerateConfig:
    """Two short samples of each GENERATE_QIDS problem; `pool` overrides the pool's settings. The generate
    and stream pool tests run the same config, so every pool is checked against one in-process reference."""
    from valley.generate.config import GenerateConfig

    return GenerateConfig(
        name=name, model=tiny_model, problems=[lcb_file], filters={"question_ids": GENERATE_QIDS},
        n=2, temperature=0.8, top_p=0.95, max_tokens=16, seed=3, part_size=2,
        pool={"num_cpus": 0.5, "batch_size": 3, **pool},
    )


# ---- the report stage on synthetic runs ---------------------------------------------------------------
REPORT_N_PROBLEMS, REPORT_N_SAMPLES = 30, 4
# (run_id, model, data_size, subset, checkpoint, epoch, pass prob, completion prob, think prob)
REPORT_RUNS = [
    ("qwen-base", "Qwen2.5-7B-Instruct", 0, "random", "base", None, 0.40, 0.99, 0.0),
    ("qwen-1k", "Qwen2.5-7B-Instruct", 1000, "random", "base", None, 0.20, 0.50, 0.6),
    ("qwen-10k", "Qwen2.5-7B-Instruct", 10000, "random", "base", None, 0.15, 0.70, 0.9),
    ("qwen-30k", "Qwen2.5-7B-Instruct", 30000, "random", "base", None, 0.30, 0.85, 1.0),
    ("qwen-100k", "Qwen2.5-7B-Instruct", 100000, "random", "base", None, 0.55, 0.95, 1.0),
    ("qwen-correct-6k", "Qwen2.5-7B-Instruct", 6000, "correct", "base", None, 0.18, 0.6, 0.9),
    ("qwen-incorrect-6k", "Qwen2.5-7B-Instruct", 6000, "incorrect", "base", None, 0.17, 0.6, 0.9),
    ("qwen-30k-easy-4k", "Qwen2.5-7B-Instruct", 4000, "easy", "30k", None, 0.35, 0.9, 1.0),
    ("qwen-30k-hard-4k", "Qwen2.5-7B-Instruct", 4000, "hard", "30k", None, 0.28, 0.9, 1.0),
    ("qwen-10k-e1", "Qwen2.5-7B-Instruct", 10000, "random", "base", 1, 0.10, 0.5, 0.8),
    ("qwen-10k-e2", "Qwen2.5-7B-Instruct", 10000, "random", "base", 2, 0.13, 0.6, 0.9),
    ("llama-base", "Llama-3.1-8B-Instruct", 0, "random", "base", None, 0.20, 0.98, 0.0),
    ("llama-1k", "Llama-3.1-8B-Instruct", 1000, "random", "base", None, 0.08, 0.40, 0.5),
    ("llama-10k", "Llama-3.1-8B-Instruct", 10000, "random", "base", None, 0.10, 0.70, 0.9),
]


def write_report_inputs(storage: Storage) -> dict[str, tuple[str, str, str]]:
    """All REPORT_RUNS' samples in one table and verdicts in another (the stage filters on run_id); returns
    each run's (samples, verdicts, problems) paths."""
    n_problems = REPORT_N_PROBLEMS
    rng = np.random.default_rng(0)
    problems = pa.table(
        {
            "question_id": [f"q{i:02d}" for i in range(n_problems)],
            "question_content": ["solve it"] * n_problems,
            "platform": [("atcoder", "leetcode", "codeforces")[i % 3] for i in range(n_problems)],
            "difficulty": [("easy", "medium", "hard")[i % 3] for i in range(n_problems)],
            "contest_date": [f"2024-{1 + i % 12:02d}-15T00:00:00" for i in range(n_problems)],
            "tests": ["[]"] * n_problems,
        }
    )
    storage.write_parquet(problems, "inputs", "problems.parquet", schema=schemas.PROBLEMS)
    s_rows, v_rows = [], []
    for run_id, _, _, _, _, _, p_pass, p_done, p_think in REPORT_RUNS:
        for i in range(n_problems):
            ease = (1.5, 1.0, 0.5)[i % 3]
            for j in range(REPORT_N_SAMPLES):
                done = rng.random() < p_done
                think = rng.random() < p_think
                passed = done and rng.random() < min(1.0, p_pass * ease / p_done)
                s_rows.append(
                    {
                        "run_id": run_id, "question_id": f"q{i:02d}", "sample_idx": j,
                        "response": ("<think>plan</think>\n" if think else "") + "```python\nprint(1)\n```",
                        "n_tokens": int(rng.integers(100, 900)) if done else 1024,
                        "finish_reason": "stop" if done else "length",
                    }
                )
                verdict = "pass" if passed else ("no_code" if not done else str(rng.choice(["wrong_answer", "time_limit"])))
                v_rows.append({"run_id": run_id, "question_id": f"q{i:02d}", "sample_idx": j, "verdict": verdict})
    storage.write_parquet(pa.Table.from_pylist(s_rows), "inputs", "samples", "part-0.parquet", schema=schemas.SAMPLES)
    storage.write_parquet(pa.Table.from_pylist(v_rows), "inputs", "verdicts.parquet", schema=schemas.VERDICTS)
    return {r[0]: ("inputs/samples", "inputs/verdicts.parquet", "inputs/problems.parquet") for r in REPORT_RUNS}


def report_config(paths: dict[str, tuple[str, str, str]], **kw: Any) -> ReportConfig:
    """A report over every REPORT_RUNS run at the paths `write_report_inputs` returned; `kw` sets more fields."""
    from valley.report.config import ReportConfig

    runs = []
    for run_id, model, size, subset, ckpt, epoch, *_ in REPORT_RUNS:
        s, v, p = paths[run_id]
        runs.append({"run_id": run_id, "model": model, "data_size": size, "subset": subset, "checkpoint": ckpt,
                     "epoch": epoch, "samples": s, "verdicts": v, "problems": p})
    return ReportConfig(experiment="valley-synthetic", runs=runs, max_tokens=1000, n_boot=200, seed=0, **kw)


# ---- LiveCodeBench's own grading as valley tables -----------------------------------------------------
LCB_ERROR_VERDICTS = {-2: "wrong_answer", -3: "time_limit", -4: "runtime_error"}  # lcb_runner error_code


def lcb_run_tables(path: Path) -> tuple[list[dict], pa.Table, pa.Table, pa.Table]:
    """An lcb_runner `*_eval_all.json.gz` file: its records, and samples, verdicts and problems tables, so
    metrics and reports can be checked against lcb_runner's own pass@1."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        records = json.load(f)
    s_rows, v_rows, p_rows = [], [], []
    for r in records:
        p_rows.append({k: r[k] for k in ("question_id", "question_content", "platform", "difficulty", "contest_date")})
        for i, (out, code, ok, meta) in enumerate(zip(r["output_list"], r["code_list"], r["graded_list"], r["metadata"], strict=True)):
            s_rows.append({"question_id": r["question_id"], "sample_idx": i, "response": out, "finish_reason": "stop"})
            err = json.loads(meta).get("error_code")
            verdict = "pass" if ok else "no_code" if not code.strip() else LCB_ERROR_VERDICTS.get(err, "runtime_error")
            v_rows.append({"question_id": r["question_id"], "sample_idx": i, "verdict": verdict})
    return records, pa.Table.from_pylist(s_rows), pa.Table.from_pylist(v_rows), pa.Table.from_pylist(p_rows)


def unpacked_loss(model: Any, docs: list[dict]) -> tuple[Any, int]:
    """The reference loss of plain transformers on unpacked documents: token losses summed over every
    document's trained tokens, divided by their count (what the trainer's packed step must equal); and
    that count."""
    import torch

    from valley.train.packing_attention import IGNORE

    total, count = torch.zeros(()), 0
    for d in docs:
        ids = torch.tensor([d["input_ids"]])
        labels = ids.masked_fill(torch.tensor([d["loss_mask"]]) == 0, IGNORE)
        n = int((labels[:, 1:] != IGNORE).sum())
        total = total + model(input_ids=ids, labels=labels).loss * n
        count += n
    return total / count, count


def assert_same_encodings(a: Any, b: Any, pairs: list[tuple[str, str]]) -> None:
    """Two ChatEncoders give the same ids, prompt length, text, mask and token spans for every pair."""
    for x, y in zip(a.encode(pairs), b.encode(pairs), strict=True):
        assert (list(x.input_ids), x.prompt_chars, x.text) == (list(y.input_ids), y.prompt_chars, y.text)
        assert x.loss_mask.tolist() == y.loss_mask.tolist()
        assert list(x.offsets) == list(y.offsets)
