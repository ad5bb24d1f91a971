"""The offline demo: a synthetic corpus, LiveCodeBench-style problems, a tokenizer and a tiny student, so the
paper's study runs end to end on a CPU (corpus, model, the instruct stage, and `valley demo` itself)."""

from valley.demo.build import STUDENT_SHAPE, write_demo
from valley.demo.corpus import (
    FAMILIES,
    INSTRUCT_FAMILIES,
    make_instruct,
    make_problems,
    make_traces,
    reference_solution,
)
from valley.demo.instruct import InstructSettings, train_instruct_student
from valley.demo.model import CHATML_TEMPLATE, SPECIAL_TOKENS, build_demo_tokenizer, build_tiny_model

__all__ = [
    "CHATML_TEMPLATE", "FAMILIES", "INSTRUCT_FAMILIES", "SPECIAL_TOKENS", "STUDENT_SHAPE", "InstructSettings",
    "build_demo_tokenizer", "build_tiny_model", "make_instruct", "make_problems", "make_traces",
    "reference_solution", "train_instruct_student", "write_demo",
]
