"""Labelling of the known differences from lcb_runner: each idiom is found where a program uses it and
not in a program that does the same without it."""

from __future__ import annotations

import pytest

from valley.grade.lcb_diff import lcb_failing_idioms

PLAIN = "n = int(input())\nprint(' '.join(map(str, range(n))))\n"

# idiom -> a program that uses it
USES = {
    "stdout.buffer": "import sys\nsys.stdout.buffer.write(b'1\\n')\n",
    "stdin.buffer.readline": "import sys\ninput = sys.stdin.buffer.readline\nprint(int(input()))\n",
    "stdin.buffer.readlines": "import sys\nprint(len(sys.stdin.buffer.readlines()))\n",
    "open(0)": "print(sum(map(int, open(0).read().split())))\n",
    "os.read(0)": "import os\nprint(len(os.read(0, 1 << 20)))\n",
    "iterate stdin": "import sys\nfor line in sys.stdin:\n    print(line.strip())\n",
    "read() after readline()": "import sys\nn = sys.stdin.readline()\nrest = sys.stdin.read()\nprint(n, rest)\n",
    "from sys import stdin/stdout": "from sys import stdin\nprint(stdin.readline())\n",
    "global in a function": "total = 0\ndef add():\n    global total\n    total += 1\nadd()\nprint(total)\n",
    "thread not joined": ("import threading\ndef main():\n    print(' '.join(input().split()))\n"
                          "threading.stack_size(1 << 26)\nthreading.Thread(target=main).start()\n"),
}


@pytest.mark.parametrize("idiom", sorted(USES))
def test_idiom_is_named_where_used(idiom):
    assert idiom in lcb_failing_idioms(USES[idiom])


def test_plain_program_and_functional_code_have_none():
    assert lcb_failing_idioms(PLAIN) == []
    assert lcb_failing_idioms(None) == []
    assert lcb_failing_idioms(USES["open(0)"], stdin_program=False) == []


@pytest.mark.parametrize("join", ["t.join()", "t.join( )", "t.join(timeout=5)"])
def test_joined_thread_is_not_a_difference(join):
    code = f"import threading\ndef main():\n    print(' '.join(input().split()))\nt = threading.Thread(target=main)\nt.start()\n{join}\n"
    assert "thread not joined" not in lcb_failing_idioms(code)
