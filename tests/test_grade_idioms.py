"""Competitive-programming idioms: a correct program passes, a broken one does not; the sandbox offers
numpy but never the grader's own packages."""

from __future__ import annotations

import sys

import pytest

from valley.grade.grader import Grader
from valley.grade.sandbox import Limits, bwrap_unavailable_reason
from valley.problems import TestSpec

NO_BWRAP = bwrap_unavailable_reason()
pytestmark = pytest.mark.skipif(NO_BWRAP is not None, reason=f"sandbox unavailable: {NO_BWRAP}")

LIMITS = Limits(timeout_s=3.0, memory_mb=1024)
# two lines of input: n, then n numbers; answer: n and the sum
SUM = TestSpec("stdin", ("3\n1 2 3\n", "2\n10 -4\n"), ("3 6\n", "2 6\n"))

# name -> (correct program, broken program)
IDIOMS = {
    "stdin_buffer_read": (
        "import sys\nn, *xs = map(int, sys.stdin.buffer.read().split())\nprint(n, sum(xs))\n",
        "import sys\nn, *xs = map(int, sys.stdin.buffer.read().split())\nprint(n, sum(xs) + 1)\n"),
    "stdin_buffer_readline": (
        "import sys\ninput = sys.stdin.buffer.readline\nn = int(input())\nxs = list(map(int, input().split()))\n"
        "print(n, sum(xs))\n",
        "import sys\ninput = sys.stdin.buffer.readline\nn = int(input())\nxs = list(map(int, input().split()))\n"
        "print(n, sum(xs[1:]))\n"),
    "stdin_buffer_readlines": (
        "import sys\nlines = sys.stdin.buffer.readlines()\nprint(int(lines[0]), sum(map(int, lines[1].split())))\n",
        "import sys\nlines = sys.stdin.buffer.readlines()\nprint(int(lines[0]), sum(map(int, lines[0].split())))\n"),
    "stdout_buffer_write": (
        "import sys\nn = int(input())\ns = sum(map(int, input().split()))\n"
        "sys.stdout.buffer.write(f'{n} {s}\\n'.encode())\n",
        "import sys\nn = int(input())\ns = sum(map(int, input().split()))\n"
        "sys.stdout.buffer.write(f'{n}{s}\\n'.encode())\n"),
    "os_read_0": (
        "import os\ndata = os.read(0, 1 << 20).split()\nprint(int(data[0]), sum(map(int, data[1:])))\n",
        "import os\ndata = os.read(0, 1 << 20).split()\nprint(int(data[0]), sum(map(int, data[2:])))\n"),
    "open_0": (
        "n, *xs = map(int, open(0).read().split())\nprint(n, sum(xs))\n",
        "n, *xs = map(int, open(0).read().split())\nprint(n, max(xs))\n"),
    "iterate_stdin": (
        "import sys\nrows = [line.split() for line in sys.stdin]\nprint(int(rows[0][0]), sum(map(int, rows[1])))\n",
        "import sys\nrows = [line.split() for line in sys.stdin]\nprint(int(rows[0][0]), len(rows[1]))\n"),
    "read_after_readline": (
        "import sys\nn = int(sys.stdin.readline())\nxs = sys.stdin.read().split()\nprint(n, sum(map(int, xs)))\n",
        "import sys\nn = int(sys.stdin.readline())\nxs = sys.stdin.read().split()\nprint(n, len(xs) * n)\n"),
    "main_guard": (
        "def main():\n    n = int(input())\n    print(n, sum(map(int, input().split())))\n\n"
        "if __name__ == \"__main__\":\n    main()\n",
        "def main():\n    n = int(input())\n    print(n, sum(map(int, input().split())))\n\n"
        "if __name__ == \"main\":\n    main()\n"),
    "threading_big_stack": (
        "import sys, threading\nsys.setrecursionlimit(1 << 20)\nthreading.stack_size(1 << 26)\n"
        "def rec(xs, i):\n    return 0 if i == len(xs) else xs[i] + rec(xs, i + 1)\n"
        "def main():\n    n = int(input())\n    print(n, rec(list(map(int, input().split())), 0))\n"
        "threading.Thread(target=main).start()\n",
        "import sys, threading\nsys.setrecursionlimit(1 << 20)\nthreading.stack_size(1 << 26)\n"
        "def rec(xs, i):\n    return 0 if i == len(xs) else xs[i] + rec(xs, i + 2)\n"
        "def main():\n    n = int(input())\n    print(n, rec(list(map(int, input().split())), 0))\n"
        "threading.Thread(target=main).start()\n"),
    "global_in_function": (
        "n = int(input())\nxs = list(map(int, input().split()))\ntotal = 0\n"
        "def add():\n    global total\n    for x in xs:\n        total += x\nadd()\nprint(n, total)\n",
        "n = int(input())\nxs = list(map(int, input().split()))\ntotal = 0\n"
        "def add():\n    total = 0\n    for x in xs:\n        total += x\nadd()\nprint(n, total)\n"),
    "from_sys_import_stdout": (
        "from sys import stdin, stdout\nn = int(stdin.readline())\nstdout.write(f'{n} {sum(map(int, stdin.readline().split()))}\\n')\n",
        "from sys import stdin, stdout\nn = int(stdin.readline())\nstdout.write(f'{n} {sum(map(int, stdin.readline().split())) - 1}\\n')\n"),
    "numpy": (
        "import numpy as np\nn = int(input())\nprint(n, int(np.array(input().split(), dtype=np.int64).sum()))\n",
        "import numpy as np\nn = int(input())\nprint(n, int(np.array(input().split(), dtype=np.int64).prod()))\n"),
}


@pytest.fixture(scope="module")
def grader():
    with Grader(LIMITS) as g:
        yield g


@pytest.mark.parametrize("name", sorted(IDIOMS))
def test_idiom_correct_passes_broken_fails(grader, name):
    good, bad = IDIOMS[name]
    g = grader.grade(good, SUM)
    assert (g.verdict, g.passed) == ("pass", 2), (name, g.first_failure)
    b = grader.grade(bad, SUM)
    assert b.verdict != "pass", name


def _digits(n: int) -> str:
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        return str(n)
    finally:
        sys.set_int_max_str_digits(old)


@pytest.mark.skipif(not hasattr(sys, "set_int_max_str_digits"), reason="Python < 3.11 has no digit limit")
def test_int_str_beyond_4300_digits(grader):
    """lcb_runner raises the int<->str digit limit to 50,000; a plain run stops at 4,300 digits."""
    spec = TestSpec("stdin", ("20000\n",), (_digits(2 ** 20000) + "\n",))
    code = "print(2 ** int(input()))\n"
    assert grader.grade(code, spec).verdict == "pass"
    assert grader.grade("print(2 ** int(input()) + 1)\n", spec).verdict == "wrong_answer"
    parse = TestSpec("stdin", ("7" * 6000 + "\n",), ("6000\n",))
    assert grader.grade("print(len(str(int(input()))))\n", parse).verdict == "pass"
    with Grader(Limits(timeout_s=3.0, semantics="script")) as bare:  # the plain interpreter's limit
        g = bare.grade(code, spec)
    assert g.verdict == "runtime_error" and "digits" in g.first_failure["error"]


def test_prelude_names_and_exit(grader):
    """lcb_runner's prelude (star-imports) and exit() ending a test normally are kept."""
    spec = TestSpec("stdin", ("4\n",), ("24\n",))
    assert grader.grade("print(factorial(int(input())))\n", spec).verdict == "pass"
    assert grader.grade("print(factorial(int(input())))\nexit(1)\n", spec).verdict == "pass"
    assert grader.grade("print(factorial(int(input())) + 1)\nexit()\n", spec).verdict == "wrong_answer"


@pytest.mark.parametrize("module", ["ray", "valley", "pyarrow", "pydantic", "torch"])
def test_grader_packages_are_not_importable(grader, module):
    spec = TestSpec("stdin", ("",), ("ok\n",))
    g = grader.grade(f"import {module}\nprint('ok')\n", spec)
    assert g.verdict == "runtime_error" and "ModuleNotFoundError" in g.first_failure["error"], g.first_failure


def test_numpy_comes_from_the_read_only_sandbox_env(grader):
    spec = TestSpec("stdin", ("",), ("/sandbox/site True\n",))
    code = ("import numpy, os\nroot = os.path.dirname(os.path.dirname(numpy.__file__))\n"
            "try:\n    open(os.path.join(root, 'planted'), 'w')\n    ro = False\nexcept OSError:\n    ro = True\n"
            "print(root, ro)\n")
    g = grader.grade(code, spec)
    assert g.verdict == "pass", g.first_failure


def test_functional_problem_can_use_numpy(grader):
    spec = TestSpec("functional", ("[1, 2, 3]",), ("6",), fn_name="total")
    code = "import numpy as np\nclass Solution:\n    def total(self, xs):\n        return int(np.sum(xs))\n"
    assert grader.grade(code, spec).verdict == "pass"


def test_sandbox_env_is_separate_from_the_grader_venv():
    from pathlib import Path

    from valley.grade.sandbox_env import DEFAULT_PACKAGES, SandboxEnvError, ensure_env, env_key

    path = Path(ensure_env(DEFAULT_PACKAGES))
    assert (path / "numpy").is_dir() and not (path / "ray").exists() and not (path / "valley").exists()
    assert not str(path).startswith(sys.prefix + "/")  # not inside the grader's virtualenv
    assert env_key(["numpy", "sympy"]) == env_key(["sympy", "numpy"]) != env_key(["numpy"])
    assert ensure_env([]) is None
    with pytest.raises(SandboxEnvError, match="make sandbox-env"):
        ensure_env(["never-built-package==0.0.1"], install=False)
