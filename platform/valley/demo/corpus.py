"""The demo's synthetic corpus: task families, teacher traces, direct answers and LCB-style problems.

The traces look like the real ones (a teacher's `<think>…</think>` reasoning, then a fenced Python
block), mostly right and some wrong, with TACO-style difficulty labels and TACO `input_output` tests;
the problems look like LiveCodeBench rows (stdin and functional with starter code). The reasoning is
mostly filler of random length, framed by two sentences that carry the substance (what is asked, which
method), so a student that copies the form without the substance rambles past its budget or writes the
wrong program: the mechanism behind the paper's valley, in miniature. Questions are posed in
LiveCodeBench's prompt format (as the evaluation poses them), so a 3-layer student need not learn to
carry a skill across prompt formats; real corpora keep their own question text. Everything is derived
from one seed, so the demo is reproducible byte for byte.
"""

from __future__ import annotations

import bisect
import json
import random
from collections.abc import Callable
from dataclasses import dataclass

from valley.generate.prompts import LCB_SYSTEM_MESSAGE, user_message

# ---- task families ---------------------------------------------------------------------------
# Each family is a small programming task with a reference implementation, a subtly wrong variant,
# both as an stdin program and a LeetCode-style method, and the two sentences of reasoning that matter.


@dataclass(frozen=True)
class Family:
    key: str
    title: str
    statement: str
    func_name: str
    solve: Callable[[list[int]], int]
    stdin_right: str
    stdin_wrong: str
    method_right: str
    method_wrong: str
    difficulty: str  # TACO label
    restate: str  # the reasoning's first sentence: what is asked
    plan: str  # its last: the method


def _kadane(a: list[int]) -> int:
    best = cur = a[0]
    for x in a[1:]:
        cur = max(x, cur + x)
        best = max(best, cur)
    return best


def _lis(a: list[int]) -> int:
    tails: list[int] = []
    for x in a:
        k = bisect.bisect_left(tails, x)
        tails[k : k + 1] = [x]
    return len(tails)


_READ = "n = int(input())\na = list(map(int, input().split()))\n"

FAMILIES: tuple[Family, ...] = (
    Family(
        "sum", "Sum of Numbers", "Given N integers, print their sum.", "totalSum", lambda a: sum(a),
        _READ + "print(sum(a))\n", _READ + "print(sum(a[1:]))\n",
        "        return sum(nums)\n", "        return sum(nums[1:])\n", "easy",
        "We need the sum of all the numbers.", "Plan: add them up with sum().",
    ),
    Family(
        "max", "Largest Element", "Given N integers, print the largest one.", "largest", lambda a: max(a),
        _READ + "print(max(a))\n", _READ + "print(a[-1])\n",
        "        return max(nums)\n", "        return nums[-1]\n", "easy",
        "We need the largest number.", "Plan: take max() of the list.",
    ),
    Family(
        "evens", "Count Even Numbers", "Given N integers, print how many of them are even.", "countEven",
        lambda a: sum(1 for x in a if x % 2 == 0),
        _READ + "print(sum(1 for x in a if x % 2 == 0))\n", _READ + "print(sum(1 for x in a if x % 2 == 1))\n",
        "        return sum(1 for x in nums if x % 2 == 0)\n", "        return sum(1 for x in nums if x % 2)\n",
        "medium", "We need to count the even numbers.", "Plan: count x with x % 2 == 0.",
    ),
    Family(
        "maxsub", "Maximum Subarray", "Given N integers, print the largest sum of a non-empty contiguous subarray.",
        "maxSubarray", _kadane,
        _READ + "best = cur = a[0]\nfor x in a[1:]:\n    cur = max(x, cur + x)\n    best = max(best, cur)\nprint(best)\n",
        _READ + "print(max(0, sum(a)))\n",
        "        best = cur = nums[0]\n        for x in nums[1:]:\n            cur = max(x, cur + x)\n"
        "            best = max(best, cur)\n        return best\n",
        "        return max(0, sum(nums))\n", "medium_hard",
        "We need the best sum of a contiguous subarray.", "Plan: Kadane's scan, keeping the best sum ending here.",
    ),
    Family(
        "inv", "Counting Inversions", "Given N integers, print the number of pairs i < j with a[i] > a[j].",
        "inversions", lambda a: sum(1 for i in range(len(a)) for j in range(i + 1, len(a)) if a[i] > a[j]),
        _READ + "print(sum(1 for i in range(n) for j in range(i + 1, n) if a[i] > a[j]))\n",
        _READ + "print(sum(1 for i in range(n) for j in range(i + 1, n) if a[i] >= a[j]))\n",
        "        n = len(nums)\n        return sum(1 for i in range(n) for j in range(i + 1, n) if nums[i] > nums[j])\n",
        "        n = len(nums)\n        return sum(1 for i in range(n) for j in range(i + 1, n) if nums[i] >= nums[j])\n",
        "hard", "We need to count pairs i < j with a[i] > a[j].", "Plan: check every pair, n is small.",
    ),
    Family(
        "lis", "Longest Increasing Subsequence",
        "Given N integers, print the length of the longest strictly increasing subsequence.", "lengthOfLIS", _lis,
        "import bisect\n" + _READ + "tails = []\nfor x in a:\n"
        "    k = bisect.bisect_left(tails, x)\n    tails[k:k + 1] = [x]\nprint(len(tails))\n",
        "import bisect\n" + _READ + "tails = []\nfor x in a:\n"
        "    k = bisect.bisect_right(tails, x)\n    tails[k:k + 1] = [x]\nprint(len(tails))\n",
        "        import bisect\n        tails = []\n        for x in nums:\n            k = bisect.bisect_left(tails, x)\n"
        "            tails[k:k + 1] = [x]\n        return len(tails)\n",
        "        import bisect\n        tails = []\n        for x in nums:\n            k = bisect.bisect_right(tails, x)\n"
        "            tails[k:k + 1] = [x]\n        return len(tails)\n",
        "very_hard", "We need the longest strictly increasing subsequence.", "Plan: patience sorting with bisect_left.",
    ),
)
# The families the instruct stage teaches: the base student can code these without thinking, and
# learns the others only from the teacher's traces.
INSTRUCT_FAMILIES = ("sum", "max", "evens")

TACO_DIFFICULTIES = ("easy", "medium", "medium_hard", "hard", "very_hard")
LCB_DIFFICULTY = {"easy": "easy", "medium": "easy", "medium_hard": "medium", "hard": "hard", "very_hard": "hard"}

FILLER_THOUGHTS = (
    "Let me restate the problem to be sure I read it right.",
    "The constraints are small, so a direct approach should be fast enough.",
    "Wait, I should double-check the edge case where every number is negative.",
    "Let me trace the first example by hand.",
    "Reading the input: first the count, then the numbers on one line.",
    "Hmm, is there an off-by-one here? Let me check the loop bounds again.",
    "An alternative would be sorting first, but that changes the order we need.",
    "I think this handles duplicates correctly, but let me verify with 2 2 2.",
    "The answer fits in a Python int, so overflow is not a concern.",
    "So the plan is clear; let me write it out.",
)
MAX_FILLER = 10  # filler sentences per trace: 1..MAX_FILLER, uniform


def _random_case(rng: random.Random) -> list[int]:
    return [rng.randint(-20, 20) for _ in range(rng.randint(1, 8))]


def _stdin_of(a: list[int]) -> str:
    return f"{len(a)}\n{' '.join(map(str, a))}\n"


def _question_text(fam: Family, variant: int, example: list[int]) -> str:
    return (
        f"{fam.statement} (variant {variant})\n\nInput\nThe first line contains N. The second line contains "
        f"N integers.\n\nOutput\nPrint the answer.\n\nExample\nInput:\n{_stdin_of(example)}Output:\n"
        f"{fam.solve(example)}\n"
    )


def _functional_content(fam: Family) -> str:
    return f"You are given an integer array nums. {fam.statement.replace('Given N integers, print', 'Return')}"


def _starter(fam: Family) -> str:
    return f"class Solution:\n    def {fam.func_name}(self, nums: List[int]) -> int:\n        "


def _method_program(fam: Family, body: str) -> str:
    return f"from typing import List\n\nclass Solution:\n    def {fam.func_name}(self, nums: List[int]) -> int:\n{body}"


def _program(fam: Family, *, functional: bool, correct: bool) -> str:
    if functional:
        return _method_program(fam, fam.method_right if correct else fam.method_wrong)
    return fam.stdin_right if correct else fam.stdin_wrong


def _lcb_question(fam: Family, *, functional: bool, variant: int, example: list[int]) -> str:
    """The user turn LiveCodeBench would send for this question (generate/prompts.py)."""
    if functional:
        return user_message(_functional_content(fam), _starter(fam))
    return user_message(_question_text(fam, variant, example), "")


def _response(rng: random.Random, fam: Family, code: str, *, think: str) -> str:
    filler = [rng.choice(FILLER_THOUGHTS) for _ in range(rng.randint(1, MAX_FILLER))]
    thoughts = "\n\n".join([fam.restate, *filler, fam.plan])
    body = f"```python\n{code}```"
    if think == "closed":
        return f"<think>\n{thoughts}\n</think>\n\nHere is my solution.\n\n{body}\n"
    if think == "unclosed":  # the teacher ran out of tokens inside its reasoning
        return f"<think>\n{thoughts}"
    return f"Here is my solution.\n\n{body}\n"


def make_traces(n: int, seed: int = 0, *, p_correct: float = 0.85) -> list[dict]:
    """`n` teacher traces in the platform's trace schema (see schemas.TRACES), `p_correct` of them right.

    Even rows are "TACO-like" (source demo-taco, TACO `input_output` tests), odd rows "OCR-like" (no
    tests), like the paper's two corpora; a third of the questions are functional (starter code).
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        fam = FAMILIES[rng.randrange(len(FAMILIES))]
        variant = rng.randrange(max(1, n // 4))
        qrng = random.Random(f"{seed}-{fam.key}-{variant}")  # same question -> same tests everywhere
        cases = [_random_case(qrng) for _ in range(4)]
        functional = qrng.random() < 1 / 3
        correct = rng.random() < p_correct
        think = "closed" if rng.random() < 0.97 else rng.choice(("unclosed", "none"))
        taco = i % 2 == 0  # only the TACO-like half carries tests (as in the paper, only TACO traces are labelled)
        if functional:
            tests = {"fn_name": fam.func_name, "inputs": [[c] for c in cases], "outputs": [[fam.solve(c)] for c in cases]}
        else:
            tests = {"inputs": [_stdin_of(c) for c in cases], "outputs": [f"{fam.solve(c)}\n" for c in cases]}
        rows.append(
            {
                "id": f"demo-{i:07d}",
                "question_id": f"demo-{fam.key}-{variant}",
                "source": "demo-taco" if taco else "demo-ocr",
                "difficulty": fam.difficulty,
                "question": _lcb_question(fam, functional=functional, variant=variant, example=cases[0]),
                "response": _response(rng, fam, _program(fam, functional=functional, correct=correct), think=think),
                "teacher": "demo-teacher",
                "tests": json.dumps(tests) if taco else None,
            }
        )
    return rows


# The teachers of the demo's teacher corpus: how often each one's program is right and its reasoning closed.
DEMO_TEACHERS = {"demo-strong": (0.95, 1.0), "demo-weak": (0.55, 0.85)}


def make_teacher_traces(n_questions: int = 200, answers: int = 16, seed: int = 0) -> list[dict]:
    """Answers of two teachers of different quality (`DEMO_TEACHERS`) to the same questions, `answers` each
    per question: a corpus whose `teacher` and answers-per-question axes a study can vary (OCR-like: no
    tests, source demo-multi)."""
    rows = []
    for q in range(n_questions):
        qrng = random.Random(f"{seed}-multi-{q}")
        fam = FAMILIES[q % len(FAMILIES)]
        variant = q // len(FAMILIES)
        cases = [_random_case(qrng) for _ in range(4)]
        functional = qrng.random() < 1 / 3
        question = _lcb_question(fam, functional=functional, variant=variant, example=cases[0])
        for teacher, (p_correct, p_closed) in DEMO_TEACHERS.items():
            rng = random.Random(f"{seed}-{teacher}-{q}")
            for k in range(answers):
                correct = rng.random() < p_correct
                think = "closed" if rng.random() < p_closed else "unclosed"
                code = _program(fam, functional=functional, correct=correct)
                rows.append({"id": f"multi-{teacher.removeprefix('demo-')}-{q:04d}-{k:02d}",
                             "question_id": f"multi-{fam.key}-{variant}", "source": "demo-multi",
                             "difficulty": fam.difficulty, "question": question,
                             "response": _response(rng, fam, code, think=think), "teacher": teacher, "tests": None})
    return rows


def make_instruct(n: int, seed: int = 0, families: tuple[str, ...] = INSTRUCT_FAMILIES) -> list[dict]:
    """`n` direct answers (code only, no reasoning, always right) to questions of `families`: the
    instruct stage's corpus, which makes the random tiny model a student that codes without thinking."""
    rng = random.Random(f"instruct-{seed}")
    chosen = [f for f in FAMILIES if f.key in families]
    if not chosen:
        raise ValueError(f"no demo family among {families}; known: {[f.key for f in FAMILIES]}")
    rows = []
    for i in range(n):
        fam = chosen[rng.randrange(len(chosen))]
        functional = rng.random() < 1 / 3
        example = _random_case(rng)
        code = _program(fam, functional=functional, correct=True)
        rows.append(
            {
                "id": f"demo-instruct-{i:06d}",
                "question_id": f"demo-instruct-{fam.key}-{i}",
                "source": "demo-instruct",
                "difficulty": fam.difficulty,
                "question": _lcb_question(fam, functional=functional, variant=rng.randrange(10_000), example=example),
                "response": f"```python\n{code}```",
                "teacher": "demo-reference",
                "tests": None,
            }
        )
    return rows


def make_problems(n: int, seed: int = 0) -> list[dict]:
    """`n` LiveCodeBench-style problems (the fields of code_generation_lite), stdin and functional,
    cycling through every family: held out from the traces and direct answers (own seed and cases)."""
    rng = random.Random(seed + 1)
    rows = []
    for i in range(n):
        fam = FAMILIES[i % len(FAMILIES)]
        functional = i % 3 == 2
        cases = [_random_case(rng) for _ in range(3)]
        if functional:
            tests = [{"input": json.dumps(c), "output": json.dumps(fam.solve(c)), "testtype": "functional"}
                     for c in cases]
            starter, content = _starter(fam), _functional_content(fam)
            platform, metadata = "leetcode", json.dumps({"func_name": fam.func_name})
        else:
            tests = [{"input": _stdin_of(c), "output": f"{fam.solve(c)}\n", "testtype": "stdin"} for c in cases]
            starter, content = "", _question_text(fam, i, cases[0])
            platform, metadata = ("atcoder" if i % 2 else "codeforces"), "{}"
        rows.append(
            {
                "question_id": f"demo{i:04d}",
                "question_title": fam.title,
                "question_content": content,
                "platform": platform,
                "contest_id": f"demo-contest-{i // 10}",
                "contest_date": f"2024-{(i % 12) + 1:02d}-01T00:00:00",
                "difficulty": LCB_DIFFICULTY[fam.difficulty],
                "starter_code": starter,
                "public_test_cases": json.dumps(tests[:1]),
                "private_test_cases": json.dumps(tests[1:]),
                "metadata": metadata,
            }
        )
    return rows


def reference_solution(problem: dict, *, correct: bool = True) -> str:
    """The demo's own right (or wrong) answer to a demo problem, for grading tests and the demo teacher."""
    fam = next(f for f in FAMILIES if f.title == problem["question_title"])
    return _program(fam, functional=bool(problem["starter_code"]), correct=correct)


def tokenizer_corpus(seed: int = 0) -> list[str]:
    """Text to train the demo tokenizer on: traces, direct answers and the evaluation's prompts."""
    texts = [r["question"] + "\n" + r["response"] for r in make_traces(400, seed)]
    texts += [r["question"] + "\n" + r["response"] for r in make_instruct(100, seed)]
    texts += [LCB_SYSTEM_MESSAGE + "\n" + user_message(p["question_content"], p["starter_code"])
              for p in make_problems(60, seed)]
    return texts
