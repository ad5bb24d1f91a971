"""The demo's instruct stage: the random tiny model becomes a student that codes without thinking.

A released instruct model (Qwen2.5-7B-Instruct) already solves some LiveCodeBench problems with direct
answers; distillation then teaches it to think first. The demo's student needs the same starting point,
so it is trained, with the platform's own data and train stages, on direct answers to the instruct
families (corpus.INSTRUCT_FAMILIES): it can solve those, and learns the others only from the traces.
The result is exported to one directory that the demo study names as its student, stamped with what it
was trained from; a second `valley demo` with the same settings returns it at once.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from valley.generate.prompts import LCB_SYSTEM_MESSAGE


@dataclass(frozen=True)
class InstructSettings:
    """How the base student is trained. The defaults make a 3-layer student solve about three in eight
    held-out demo problems (its families' share, less its mistakes) in about a minute on two cores."""

    rows: int = 600
    epochs: int = 3
    learning_rate: float = 1e-3
    max_seq_len: int = 1024  # packed rows; a direct answer with its prompt is about 220 tokens
    global_batch_size: int = 2  # packed rows per step: about nine answers
    seed: int = 0


def train_instruct_student(random_model: str | Path, instruct_file: str | Path, student_dir: str | Path,
                           runs_dir: str | Path, settings: InstructSettings = InstructSettings()) -> Path:
    """Run the data and train stages on `instruct_file` from `random_model`; export to `student_dir`.

    Both stages write under `runs_dir` and are resumable; the export is copied to a temporary sibling
    and renamed, so `student_dir` is either absent or complete.
    """
    from rich.console import Console

    from valley import runtime
    from valley.data.config import DataConfig
    from valley.data.stage import run_data
    from valley.storage import Storage
    from valley.train.config import TrainConfig
    from valley.train.stage import run_train

    student = Path(student_dir)
    stamp = json.dumps({"model": str(random_model), "data": str(instruct_file), **asdict(settings)}, sort_keys=True)
    made_from = student / ".instruct.json"  # what this export was trained from: a change trains again
    if made_from.exists() and made_from.read_text(encoding="utf-8") == stamp:
        return student
    runtime.init()
    storage = Storage(str(runs_dir))
    log = Console(stderr=True).log
    log(f"demo: instruct stage: {settings.rows} direct answers, {settings.epochs} epochs -> {student}")
    # absolute: Ray's workers run in the directory Ray started in, not necessarily this one
    model, answers = str(Path(random_model).resolve()), str(Path(instruct_file).resolve())
    data = run_data(DataConfig(name="demo-instruct", inputs=[answers], tokenizer=model,
                               system_prompt=LCB_SYSTEM_MESSAGE, max_seq_len=settings.max_seq_len,
                               seed=settings.seed), storage)
    trained = run_train(TrainConfig(name="demo-instruct", data=data.stage_dir, model=model,
                                    epochs=settings.epochs, global_batch_size=settings.global_batch_size,
                                    micro_batch_size=settings.global_batch_size, learning_rate=settings.learning_rate,
                                    warmup_ratio=0.1, gradient_checkpointing=False, num_workers=1,
                                    # alone on the machine: its one worker may use every core while
                                    # holding one Ray CPU (the other stays free for Ray Data's readers)
                                    cpus_per_worker=1.0, torch_threads=min(os.cpu_count() or 1, 8),
                                    checkpoint_every_steps=10_000, seed=settings.seed),
                        storage)
    log(f"demo: instruct stage: {trained.steps} steps, final loss {trained.final_loss}")
    tmp = student.with_name(f".{student.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(storage.uri(trained.model_dir), tmp)
    (tmp / ".instruct.json").write_text(stamp, encoding="utf-8")
    shutil.rmtree(student, ignore_errors=True)
    tmp.replace(student)
    return student
