"""Hostile programs: each is contained, gets the right verdict, the grader carries on, and no process
outlives its sample (checked in the process table)."""

from __future__ import annotations

import os
import time

import psutil
import pytest

from valley.errors import SandboxUnavailableError
from valley.grade.grader import grade_code
from valley.grade.sandbox import (
    Limits,
    Sandbox,
    SandboxError,
    bwrap_command,
    bwrap_unavailable_reason,
    check_bwrap,
    find_bwrap,
    interpreter,
)
from valley.grade.sandbox_procs import sandbox_processes
from valley.problems import TestSpec

NO_BWRAP = bwrap_unavailable_reason()
pytestmark = pytest.mark.skipif(NO_BWRAP is not None, reason=f"sandbox unavailable: {NO_BWRAP}")

LIMITS = Limits(timeout_s=1.5, memory_mb=512, max_output_bytes=1 << 20, nproc=32)
ADD = TestSpec("stdin", ("1 2\n", "3 4\n"), ("3\n", "7\n"))
GOOD = "a, b = map(int, input().split())\nprint(a + b)\n"


def _no_leftovers(before: set[int], wait_s: float = 3.0) -> list[int]:
    deadline = time.monotonic() + wait_s
    while True:
        left = sorted(set(sandbox_processes(started_here=True)) - before)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


HOSTILE = {
    "fork_bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
                  "time_limit"),
    "memory_hog": ("chunks = []\nwhile True:\n    chunks.append(bytearray(64 << 20))\n", "memory_limit"),
    "infinite_loop": ("while True:\n    pass\n", "time_limit"),
    "ignore_sigterm": ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                       "while True:\n    time.sleep(0.01)\n", "time_limit"),
    "gigabyte_stdout": ("import sys\nblock = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(block)\n",
                        "runtime_error"),
    "gigabyte_stdout_fd": ("import os\nblock = b'x' * (1 << 20)\nfor _ in range(1024):\n    os.write(1, block)\n",
                           "runtime_error"),
    "network_connect": ("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)\nprint(3)\n",
                        "runtime_error"),
    "write_outside_workdir": ("open('/usr/lib/pwned', 'w').write('x')\n", "runtime_error"),
    "kill_the_driver": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint(3)\n", "runtime_error"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_program_is_contained(name):
    code, verdict = HOSTILE[name]
    before = set(sandbox_processes(started_here=True))
    t0 = time.monotonic()
    g = grade_code(code, ADD, LIMITS)
    assert g.verdict == verdict, g.first_failure
    assert time.monotonic() - t0 < 20  # the kill is prompt, not the outer safety net
    assert _no_leftovers(before) == []
    assert grade_code(GOOD, ADD, LIMITS).verdict == "pass"  # the grader keeps going


def test_sleeping_children_that_outlive_their_parent_are_killed():
    code = ("import os, subprocess, time\n"
            "for _ in range(3):\n"
            "    if os.fork() == 0:\n"
            "        os.setsid()\n"
            "        subprocess.Popen(['sleep', '313'])\n"
            "        time.sleep(300)\n"
            "        os._exit(0)\n" + GOOD)
    before = set(sandbox_processes(started_here=True))
    g = grade_code(code, ADD, LIMITS)
    assert g.verdict == "pass"  # the parent answered; its orphans must still be gone
    assert _no_leftovers(before) == []
    assert not [p for p in psutil.process_iter(["name", "cmdline"])
                if p.info["name"] == "sleep" and p.info["cmdline"] == ["sleep", "313"]]


def test_grader_files_are_invisible(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    for path in (str(secret), os.path.abspath("pyproject.toml"), "/etc/passwd", "/proc/1/environ"):
        code = f"print(open({path!r}).read())\n"
        g = grade_code(code, ADD, LIMITS)
        assert g.verdict == "runtime_error", (path, g.first_failure)
        assert "TOP-SECRET" not in str(g.first_failure)
    listing = grade_code("import os\nprint(sorted(os.listdir('/')))\n", TestSpec("stdin", ("",), ("",)), LIMITS)
    shown = listing.first_failure["output"]
    assert "work" not in shown and "home" not in shown


def test_writes_stay_in_the_private_tmpfs(tmp_path):
    target = tmp_path / "planted"
    code = f"open('scratch.txt', 'w').write('ok')\nopen({str(target)!r}, 'w').write('x')\n"
    g = grade_code(code, ADD, LIMITS)
    assert g.verdict == "runtime_error" and not target.exists()


def test_bwrap_command_asks_for_isolation():
    cmd = bwrap_command("/x/bwrap", LIMITS, interpreter())
    for flag in ("--unshare-pid", "--unshare-net", "--die-with-parent", "--new-session", "--clearenv"):
        assert flag in cmd
    assert cmd[cmd.index("--tmpfs") - 1] == str(LIMITS.tmpfs_mb << 20)
    binds = [cmd[i + 2] for i, a in enumerate(cmd) if a in ("--ro-bind", "--ro-bind-try")]
    assert "/usr" in binds and not any(b.startswith(("/work", "/home")) for b in binds)
    assert "--bind" not in cmd  # nothing of the host is writable


def test_missing_bwrap_is_a_clear_error_and_rlimit_mode_is_opt_in():
    assert find_bwrap()
    with pytest.raises(SandboxUnavailableError, match="rlimit_only"):
        check_bwrap(None)
    with pytest.raises(SandboxUnavailableError, match="rlimit_only"):
        check_bwrap("/bin/false")
    assert grade_code(GOOD, ADD, LIMITS, sandbox="rlimit_only").verdict == "pass"
    assert grade_code("while True:\n    pass\n", ADD, LIMITS, sandbox="rlimit_only").verdict == "time_limit"


def test_dead_driver_is_reported_not_hung():
    with Sandbox(LIMITS) as box:
        box.start()
        assert box.load(GOOD, "stdin", None)["status"] == "ready"
        os.killpg(box.proc.pid, 9)
        box.proc.wait()
        assert _no_leftovers(set()) == []  # the pid namespace went with bwrap
        with pytest.raises(SandboxError):
            box.run("1 2\n")


NON_ROOT_SCRIPT = """
import sys
sys.path.insert(0, {platform!r})
from valley.grade.sandbox import Limits, Sandbox

bomb = "import os\\nwhile True:\\n    try:\\n        os.fork()\\n    except OSError:\\n        break\\nprint('contained')"
with Sandbox(Limits(timeout_s=3, nproc=16, sandbox_packages=()), bwrap={bwrap!r}) as box:
    box.start()
    assert box.load(bomb, "stdin", None)["status"] == "ready"
    out = box.run("")
    assert out["status"] == "ok" and "contained" in out["stdout"], out
    box.reset()
    box.load("import socket\\nsocket.create_connection(('1.1.1.1', 80), timeout=1)", "stdin", None)
    out = box.run("")
    assert out["status"] == "runtime_error" and "unreachable" in out["error"], out
print("NON-ROOT OK")
"""


def _closed_to_others(path: str) -> str | None:
    """The first directory on the way to `path` that other users cannot enter, if any."""
    import stat

    parts = os.path.abspath(path).split(os.sep)
    for i in range(2, len(parts) + 1):
        d = os.sep.join(parts[:i])
        if not os.stat(d).st_mode & stat.S_IXOTH:
            return d
    return None


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/setpriv")
                    or not os.path.exists("/usr/bin/python3"), reason="needs root, setpriv and a system python")
def test_unprivileged_grader_uses_a_user_namespace():
    """Graders on a cluster run unprivileged: bwrap then adds a user namespace, and the process limit
    counts per namespace. Run the sandbox as `nobody` with the system Python (the venv's is not readable)."""
    import subprocess

    platform = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "platform"))
    closed = _closed_to_others(platform)
    if closed:
        pytest.skip(f"{closed} is closed to other users (e.g. a checkout under a mktemp directory), so `nobody` "
                    "cannot import the package")
    script = NON_ROOT_SCRIPT.format(platform=platform, bwrap=find_bwrap())
    proc = subprocess.run(["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           "/usr/bin/python3", "-"], input=script, capture_output=True, text=True, timeout=120,
                          cwd="/")
    assert "NON-ROOT OK" in proc.stdout, proc.stderr[-2000:]


def test_programs_sharing_a_sandbox_cannot_see_each_other():
    """A batch reuses one sandbox: files and processes of one program are gone before the next runs,
    and a program that kills the driver only costs a fresh sandbox for the next one."""
    from valley.grade.grader import Grader

    one = TestSpec("stdin", ("",), ("clean\n",))
    litter = ("import os, time\nopen('/tmp/leak', 'w').write('x')\nos.makedirs('/tmp/d/e', exist_ok=True)\n"
              "if os.fork() == 0:\n    os.setsid()\n    time.sleep(300)\nprint('clean')\n")
    check = ("import os\nleft = [p for p in os.listdir('/proc') if p.isdigit() and int(p) not in (1, os.getpid(),"
             " os.getppid())]\nprint('clean' if not os.path.exists('/tmp/leak') and not os.path.exists('/tmp/d')"
             " and not left else f'dirty {left}')\n")
    killer = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
    before = set(sandbox_processes(started_here=True))
    with Grader(LIMITS) as grader:
        assert grader.grade(litter, one).verdict == "pass"
        g = grader.grade(check, one)
        assert g.verdict == "pass", g.first_failure
        assert grader.grade(killer, one).verdict == "runtime_error"
        assert grader.grade(check, one).verdict == "pass"
        assert grader.sandboxes_started == 3  # the killer is graded twice (a driver death is retried once)
    assert _no_leftovers(before) == []
