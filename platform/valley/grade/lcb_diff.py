"""The known, intended differences from lcb_runner: idioms its grader fails in correct programs.

lcb_runner runs a stdin program as a function with mocked stdin/stdout; the mocks and that
rewriting fail programs a plain `python solution.py < input` run passes. This grader runs them as
plain Python does (harness.py), so a correct program using one of these idioms passes here and
fails there. The agreement benchmark and tests use this list to name each disagreement.
Detection is by pattern on the source: enough to label a disagreement, not to grade anything.
"""

from __future__ import annotations

import ast
import re

# name -> (pattern, what lcb_runner does with it)
IDIOM_PATTERNS: dict[str, tuple[re.Pattern[str], str]] = {
    "stdout.buffer": (re.compile(r"stdout\.buffer"), "its captured stdout is a StringIO without .buffer"),
    "stdin.buffer.readline": (re.compile(r"stdin\.buffer\.readline\b(?!s)"),
                              "its stdin.buffer.readline returns the first line every time"),
    "stdin.buffer.readlines": (re.compile(r"stdin\.buffer\.readlines"), "its stdin.buffer has no readlines"),
    "open(0)": (re.compile(r"\bopen\(\s*0\s*[,)]"), "open is the real one: fd 0 is the grader's own stdin"),
    "os.read(0)": (re.compile(r"\bos\.read\(\s*0\s*,"), "fd 0 is the grader's own stdin, not the input"),
    "iterate stdin": (re.compile(r"\bin\s+(?:sys\.)?stdin\s*:|\biter\(\s*(?:sys\.)?stdin\b|"
                                 r"fileinput|stdin\.__iter__"), "its stdin mock cannot be iterated"),
    "read() after readline()": (re.compile(r"(?s)stdin\.readline\b.*stdin\.read\(\)"),
                                "its read() returns the whole input again after readline()"),
    "from sys import stdin/stdout": (re.compile(r"(?m)^from\s+sys\s+import\s+[^\n]*\b(?:stdin|stdout)\b"),
                                     "top-level imports are hoisted out of the function and bind the "
                                     "unmocked streams"),
}


def _global_in_nested_def(code: str) -> bool:
    """`global x` in a function of a stdin program: lcb_runner turns the module body into a function,
    so x is a local of that function and the `global` lookup fails."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError):
        return False
    top_names = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    return any(isinstance(node, ast.Global) and bool(top_names.intersection(node.names)) for node in ast.walk(tree))


_THREAD_STARTED = re.compile(r"\bThread\((?s:.*)\.start\(\s*\)")
_THREAD_JOINED = re.compile(r"\.join\(\s*(?:\)|timeout\b)")  # str.join always takes an argument


def _thread_not_joined(code: str) -> bool:
    """A thread started and never joined: lcb_runner reads the captured output as soon as the wrapped
    program returns, so what the thread prints afterwards is lost (a race that fast threads sometimes
    win); a plain run waits for the thread before the interpreter exits."""
    return bool(_THREAD_STARTED.search(code)) and not _THREAD_JOINED.search(code)


def lcb_failing_idioms(code: str | None, *, stdin_program: bool = True) -> list[str]:
    """Idioms in `code` that lcb_runner's grader fails although a plain Python run handles them."""
    if not code or not stdin_program:
        return []
    found = [name for name, (pat, _) in IDIOM_PATTERNS.items() if pat.search(code)]
    if _global_in_nested_def(code):
        found.append("global in a function")
    if _thread_not_joined(code):
        found.append("thread not joined")
    return found
