"""Host-side forensics of sandbox processes: find them in /proc, and kill what a sandbox uid left.

Kept apart from the launcher (sandbox.py) because it answers a different question: not "how do we
start a sandbox" but "what of ours is still running on this host", which the sandbox's cleanup,
tests and operators all ask. A sandbox process is recognised by the harness on its command line or,
when the grader runs as root, by its uid (UID_BASE + the sandbox's pid, unique while it runs).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from valley.grade.harness import descendants  # stdlib-only, importable without side effects

HARNESS = Path(__file__).with_name("harness.py")
IN_SANDBOX_HARNESS = "/sandbox/harness.py"
UID_BASE = 1_000_000  # sandbox uids are UID_BASE + pid of the sandbox: unique while it runs

_UIDS_STARTED_HERE: set[int] = set()


def note_started_uid(uid: int) -> None:
    """Remember a sandbox uid this process handed out, so `sandbox_processes(started_here=True)`
    also finds its orphans (reparented away from us, but still running under that uid)."""
    _UIDS_STARTED_HERE.add(uid)


def _uid_of(status: str) -> int:
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


def kill_uid(uid: int) -> None:
    """Kill every process whose real uid is `uid` (rlimit-only mode's cleanup when we are root)."""
    for _ in range(50):
        found = False
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/status", encoding="utf-8") as f:
                    uid_line = next(line for line in f if line.startswith("Uid:"))
            except (OSError, StopIteration):
                continue
            if int(uid_line.split()[1]) == uid:
                found = True
                with contextlib.suppress(OSError):
                    os.kill(int(name), signal.SIGKILL)
        if not found:
            return
        time.sleep(0.01)


def sandbox_processes(started_here: bool = False) -> list[int]:
    """Pids of live sandbox processes on this host (drivers, programs and anything they started).

    Recognised by the driver's command line or, when the grader runs as root, by the sandbox uids;
    used by tests and operators to check that nothing outlived its sample. `started_here` keeps
    only those of sandboxes this process started (its descendants, or an orphan with one of its uids).
    """
    mine = set(descendants(os.getpid())) if started_here else set()
    found = []
    markers = (IN_SANDBOX_HARNESS.encode(), str(HARNESS).encode())
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{name}/status", encoding="utf-8") as f:
                status = f.read()
        except OSError:
            continue
        if "State:\tZ" in status:
            continue
        uid = _uid_of(status)
        if not (any(m in cmdline for m in markers) or uid >= UID_BASE):
            continue
        if not started_here or int(name) in mine or uid in _UIDS_STARTED_HERE:
            found.append(int(name))
    return found
