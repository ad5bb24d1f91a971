"""`valley demo`: write the demo's files and train its base student, once, under one directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from valley.demo.corpus import make_instruct, make_problems, make_teacher_traces, make_traces
from valley.demo.instruct import InstructSettings, train_instruct_student
from valley.demo.model import build_demo_tokenizer, build_tiny_model

# The demo student's shape: big enough to learn six small programs and the form of the traces, small
# enough that a 1,600-trace run trains in minutes on two cores (tests use build_tiny_model's smaller default).
STUDENT_SHAPE = {"hidden_size": 192, "num_layers": 3}


def _write_if_changed(path: Path, text: str) -> None:
    """Atomic, and skipped when the file already holds `text`: the stages fingerprint their inputs, so an
    unchanged file must keep its mtime for a second `valley demo` to leave the study's work valid."""
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    _write_if_changed(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def write_demo(out_dir: str | Path, *, n_traces: int = 2000, n_problems: int = 40, seed: int = 0,
               with_model: bool = True, instruct: InstructSettings | None = None) -> dict[str, str]:
    """Write the demo corpus, problems, tokenizer and random tiny model under `out_dir`; with `instruct`,
    also train the base student (`student/`) from them. Returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"traces": out / "traces.jsonl", "problems": out / "problems.jsonl", "tokenizer": out / "tokenizer",
             "teacher_traces": out / "traces-teachers.jsonl"}
    _write_jsonl(paths["traces"], make_traces(n_traces, seed))
    # two teachers × 16 answers to the same questions: the teacher and answers-per-question studies' corpus
    _write_jsonl(paths["teacher_traces"], make_teacher_traces(max(20, n_traces // 30), 16, seed))
    _write_jsonl(paths["problems"], make_problems(n_problems, seed))
    shape = STUDENT_SHAPE if instruct is not None else {}
    stamp = json.dumps({"seed": seed, "shape": shape, "with_model": with_model}, sort_keys=True)
    built = out / ".built.json"  # what the tokenizer and model below were built from
    fresh = built.exists() and built.read_text(encoding="utf-8") == stamp and (
        not with_model or (out / "model" / "config.json").exists())
    if not fresh:
        build_demo_tokenizer(paths["tokenizer"], seed=seed)
        if with_model:
            build_tiny_model(out / "model", paths["tokenizer"], seed=seed, **shape)
            shutil.rmtree(out / "student", ignore_errors=True)  # trained from the model just replaced
        _write_if_changed(built, stamp)
    if with_model:
        paths["model"] = out / "model"
    if instruct is not None:
        if not with_model:
            raise ValueError("the instruct stage trains the random model: with_model must be true")
        paths["instruct"] = out / "instruct.jsonl"
        _write_jsonl(paths["instruct"], make_instruct(instruct.rows, seed))
        paths["student"] = train_instruct_student(paths["model"], paths["instruct"], out / "student",
                                                  out / "instruct-runs", instruct)
    return {k: str(v) for k, v in paths.items()}
