"""Grade one program against one problem's tests: sandbox outcomes + comparison -> a verdict.

lcb_runner semantics: tests run in order and grading stops at the first failing test; a program
that does not compile fails every test. Comparison happens here, outside the sandbox. Verdict
`grader_error` (not a model failure) marks samples the grader could not run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from valley.errors import SandboxUnavailableError
from valley.grade.compare import compare_stdout, compare_stdout_taco, compare_value, truncate
from valley.grade.extract import extract_code
from valley.grade.sandbox import Limits, Sandbox, SandboxError
from valley.grade.sandbox_env import SandboxEnvError
from valley.problems import FUNCTIONAL, TestSpec

# Harness status -> verdict when a test did not complete normally.
STATUS_VERDICT = {
    "timeout": "time_limit",
    "memory": "memory_limit",
    "runtime_error": "runtime_error",
    "output_limit": "runtime_error",
}


@dataclass
class TestResult:
    __test__ = False  # not a pytest class

    index: int
    status: str  # pass | wrong_answer | time_limit | runtime_error | memory_limit
    wall_s: float = 0.0
    cpu_s: float = 0.0
    detail: str = ""


@dataclass
class Grade:
    verdict: str
    passed: int
    total: int
    first_failure: dict | None = None
    runtime_s: float = 0.0
    cpu_s: float = 0.0
    tests: list[TestResult] = field(default_factory=list)
    # set when the verdict may be the host's fault (a wall-clock kill while the program's CPU time was
    # under the limit, or a grader_error): the stage re-runs the sample alone before it is final
    needs_rerun: bool = False
    rerun_alone: bool = False  # this grade comes from such a re-run

    def failure_json(self) -> str | None:
        return None if self.first_failure is None else json.dumps(self.first_failure)


class DriverDied(Exception):
    """The sandbox driver went away while running a program."""


def _check(spec: TestSpec, i: int, outcome: dict) -> tuple[bool, str]:
    if spec.mode == FUNCTIONAL:
        result = outcome.get("result")
        if result is None:
            return False, outcome.get("error") or "no value returned"
        return compare_value(result, spec.outputs[i], taco=spec.compare == "taco")
    got = outcome.get("stdout", "")
    return (compare_stdout_taco if spec.compare == "taco" else compare_stdout)(got, spec.outputs[i])


class Grader:
    """Grades programs one after another in one warm sandbox, replacing it when a program broke it.

    Failures of the grader itself never become a model failure: a sandbox that cannot start gives
    the verdict `grader_error` (retried by the stage); a driver that dies under a program is
    replaced and the program graded once more, and only a program that kills it again is failed.
    """

    def __init__(self, limits: Limits, *, sandbox: str = "bwrap", bwrap: str | None = None):
        self.limits, self.kind, self.bwrap = limits, sandbox, bwrap
        self._box: Sandbox | None = None
        self.sandboxes_started = 0

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._box is not None:
            self._box.close()
            self._box = None

    def _sandbox(self) -> Sandbox:
        """A live sandbox. Start-up runs none of the program, so failing there is the host's fault
        (overload, no pids left): retried once, then raised."""
        if self._box is not None and self._box.alive:
            return self._box
        self.close()
        for attempt in range(2):
            box = Sandbox(self.limits, kind=self.kind, bwrap=self.bwrap)
            try:
                box.start()
            except (SandboxError, SandboxUnavailableError, SandboxEnvError, OSError) as exc:
                box.close()
                if attempt == 1:
                    raise SandboxError(str(exc)) from exc
                continue
            self._box = box
            self.sandboxes_started += 1
            break
        assert self._box is not None
        return self._box

    def grade(self, code: str | None, spec: TestSpec) -> Grade:
        """Run `code` on every test of `spec` (stopping at the first failure) and return its verdict."""
        total = len(spec)
        if code is None or not code.strip():
            return Grade("no_code", 0, total)
        if total == 0:
            return Grade("pass", 0, 0)
        died = ""
        for attempt in range(2):
            try:
                box = self._sandbox()
            except SandboxError as exc:
                return Grade("grader_error", 0, total, {"test": None, "error": f"sandbox could not start: {exc}"},
                             needs_rerun=True)
            try:
                return self._run_tests(box, code, spec)
            except DriverDied as exc:
                self.close()
                died = f"{exc} (twice: the program kills the sandbox driver)" if attempt else str(exc)
        return Grade("runtime_error", 0, total, {"test": None, "verdict": "runtime_error", "error": died})

    def _run_tests(self, box: Sandbox, code: str, spec: TestSpec) -> Grade:
        grade = Grade("pass", 0, len(spec))
        for i, test_input in enumerate(spec.inputs):
            try:
                outcome = (box.load_and_run(code, spec.mode, spec.fn_name, test_input) if i == 0
                           else box.run(test_input))
            except SandboxError as exc:
                raise DriverDied(f"sandbox driver died at test {i}: {exc}") from exc
            if outcome.get("status") == "syntax_error":
                return Grade("syntax_error", 0, len(spec), {"test": None, "error": outcome.get("error", "")})
            wall, cpu = float(outcome.get("wall_s", 0.0)), float(outcome.get("cpu_s", 0.0))
            grade.runtime_s += wall
            grade.cpu_s += cpu
            status = outcome.get("status", "runtime_error")
            if status == "ok":
                ok, why = _check(spec, i, outcome)
                verdict, detail = ("pass", "") if ok else ("wrong_answer", why)
            else:
                verdict = STATUS_VERDICT.get(status, "runtime_error")
                detail = outcome.get("error", status)
            grade.tests.append(TestResult(i, verdict, wall, cpu, detail))
            if verdict == "pass":
                grade.passed += 1
                continue
            grade.verdict = verdict
            got = outcome.get("result") if spec.mode == FUNCTIONAL else outcome.get("stdout")
            grade.first_failure = {
                "test": i, "verdict": verdict, "error": truncate(detail),
                "input": truncate(test_input), "expected": truncate(spec.outputs[i]),
                "output": None if got is None else truncate(got),
            }
            if outcome.get("limit"):
                grade.first_failure["limit"] = outcome["limit"]
                grade.needs_rerun = outcome["limit"] == "wall"
            if outcome.get("stderr"):
                grade.first_failure["stderr"] = truncate(outcome["stderr"])
            break
        return grade


def grade_code(code: str | None, spec: TestSpec, limits: Limits, *, sandbox: str = "bwrap",
               bwrap: str | None = None) -> Grade:
    """Grade one program in a sandbox of its own."""
    with Grader(limits, sandbox=sandbox, bwrap=bwrap) as grader:
        return grader.grade(code, spec)


def grade_response(response: str | None, spec: TestSpec, limits: Limits, *, sandbox: str = "bwrap",
                   bwrap: str | None = None) -> Grade:
    """Extract the final code of a model response and grade it."""
    return grade_code(extract_code(response), spec, limits, sandbox=sandbox, bwrap=bwrap)
