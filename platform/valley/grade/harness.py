"""In-sandbox test driver (stdlib only; runs as a script under `python -I -S -B` inside the sandbox).

Why a separate process: model code is hostile, so it runs only in children forked per test; this
driver never executes it. The grader talks to the driver over stdin/stdout with one JSON object per
line: a setup message (limits, uid), then per program `program` (compile, and run the first test
when it carries an input), one `test` per further input and, optionally, `reset` (a new program
resets by itself, which saves a round trip per sample). The driver answers each test with the raw
result (stdout text or the returned value as JSON) and the grader compares it outside the sandbox,
so a program cannot forge a pass by writing to the protocol. After every test the driver kills
every process the program left behind (it is a child subreaper, so orphans come back to it);
a reset also empties the working directory, so the next program starts from a clean sandbox.

Time: the limit is the CPU time of the test's whole process tree (load does not change it), polled
from /proc while the test runs; a looser wall-clock limit stops sleeping or blocked programs, and
its answer says which limit fired so the grader can re-run such a test alone.
"""

import contextlib
import ctypes
import errno
import gc
import json
import math
import os
import resource
import select
import shutil
import signal
import sys
import time
import traceback

# The names lcb_runner's grader makes available to every solution (it prepends star-imports of
# these modules), so programs that forget an import behave the same here.
PRELUDE_MODULES = (
    "string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random",
    "statistics", "itertools", "functools", "operator", "io", "sys", "json", "builtins", "typing",
)
EXTRA_PRELOAD = ("fractions", "decimal", "array", "queue", "dataclasses", "enum", "textwrap", "unittest",
                 "threading", "numbers", "struct", "hashlib")
PRELUDE = "".join(f"from {m} import *\n" for m in PRELUDE_MODULES) + "".join(
    f"import {m}\n" for m in PRELUDE_MODULES) + "sys.setrecursionlimit(50000)\n"

PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 4, 36


def _prctl(option, value):
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def send(obj):
    sys.stdout.buffer.write(json.dumps(obj, ensure_ascii=True).encode("ascii") + b"\n")
    sys.stdout.buffer.flush()


def receive():
    line = sys.stdin.buffer.readline()
    return json.loads(line.decode("utf-8")) if line.strip() else None


# ---- process hygiene -----------------------------------------------------------------------------
def _children_map():
    kids = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(name))
    return kids


def descendants(root):
    kids, out, todo = _children_map(), [], [root]
    while todo:
        for k in kids.get(todo.pop(), ()):
            out.append(k)
            todo.append(k)
    return out


def _direct_children(pid):
    """Children of `pid` from /proc/<pid>/task/*/children (one small read per thread, not a /proc scan);
    None where the kernel does not offer these files."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    kids = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                kids += [int(x) for x in f.read().split()]
        except FileNotFoundError:
            return None
        except OSError:
            continue
    return kids


def my_descendants():
    """Descendants of the driver; orphans are re-parented to it (subreaper), so a walk of the children
    files finds them all. Falls back to a /proc scan."""
    me = os.getpid()
    first = _direct_children(me)
    if first is None:
        return descendants(me)
    out, todo = [], list(first)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += _direct_children(pid) or ()
    return out


def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def sweep():
    """SIGKILL every descendant until none is left (a fork loop may respawn for a few rounds)."""
    for _ in range(200):
        pids = my_descendants()
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.002)
        reap()


# ---- how a program runs ------------------------------------------------------------------------
# A stdin program runs as a plain `python program.py < input` would: `__name__ == "__main__"`, the
# test input on file descriptor 0 (so sys.stdin, sys.stdin.buffer, open(0) and os.read(0, n) all
# work), stdout on descriptor 1 (print, sys.stdout.buffer.write and os.write(1, ...) all land, in
# order), non-daemon threads joined before the end. Semantics "lcb" adds what lcb_runner gives every
# program: its prelude of star-imports (code that forgets an import still runs), a recursion limit
# of 50,000, int<->str conversion up to 50,000 digits, and exit() ending the test normally.
# lcb_runner's own in-memory stdin/stdout mocks are deliberately not reproduced: they fail correct
# programs (no sys.stdout.buffer, stdin.buffer.readline repeating the first line), see README.
def compile_program(cfg):
    """The program's code object (compiled once per program, run once per test in a forked child)."""
    return compile(cfg["code"], "<solution>", "exec")


_PRELUDE_NAMES = {}  # filled by the driver before the first fork (prelude_names)


def prelude_names():
    """The namespace lcb_runner's prelude leaves, computed once (saves re-running 36 imports per test)."""
    import builtins

    g = {"__builtins__": builtins}
    exec(PRELUDE, g)
    sys.setrecursionlimit(1000)  # the prelude raised it; only the program's process needs that
    return g


def _join_threads():
    threading = sys.modules.get("threading")
    if threading is None:
        return
    me = threading.current_thread()
    for t in threading.enumerate():
        if t is not me and not t.daemon:
            t.join()


def _execute(cfg, prog, status):
    """Run the program once in this (child) process; fills `status`."""
    import builtins

    lcb = cfg.get("semantics", "lcb") == "lcb"
    functional = cfg["mode"] == "functional"
    g = {"__builtins__": builtins}
    if lcb:  # the prelude's names, bound once in the driver; the streams `from sys import *` gave are this test's
        # Used in place, not copied: this forked child is thrown away after the test, and a copy would
        # touch (copy-on-write) a page per name, about a third of a trivial test's CPU time.
        g = _PRELUDE_NAMES if _PRELUDE_NAMES else g
        if not _PRELUDE_NAMES:
            exec(PRELUDE, g)
        g.update(stdin=sys.stdin, stdout=sys.stdout, stderr=sys.stderr)
        sys.setrecursionlimit(50000)
    g["__name__"] = "tmp_sol" if functional else "__main__"
    if not functional:
        exec(prog, g)
        _join_threads()
        return
    args = [json.loads(line) for line in cfg["input"].split("\n")]
    exec(prog, g)
    target = g["Solution"]() if "class Solution" in cfg["code"] else None
    method = getattr(target, cfg["fn_name"]) if target is not None else g[cfg["fn_name"]]
    value = method(*args)
    if isinstance(value, tuple):
        value = list(value)
    try:
        status["result"] = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        status["result"] = None
        status["error"] = "returned value is not JSON-serialisable: " + repr(value)[:200]


def _limit_child(cfg):
    limit = cfg["max_output_bytes"] + 1
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    mem = cfg["memory_bytes"]
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    cpu = int(math.ceil(cfg["timeout_s"])) + 1  # a backstop: the driver stops the tree at timeout_s of CPU
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def child(cfg, prog, fds):
    """Runs in the forked child: descriptors 0-3 = input, stdout, stderr, status; limits; run; report."""
    os.setsid()
    for src, dst in zip(fds, (0, 1, 2, 3)):
        os.dup2(src, dst)
    os.closerange(4, 65536)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)  # as in a fresh interpreter: exceeding the output limit kills
    _limit_child(cfg)
    if cfg.get("semantics", "lcb") == "lcb" and hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(50000)
    stdout = open(1, "w", encoding="utf-8", errors="surrogateescape", closefd=False)  # noqa: SIM115
    sys.stdin = sys.__stdin__ = open(0, encoding="utf-8", errors="surrogateescape", closefd=False)  # noqa: SIM115
    sys.stdout = sys.__stdout__ = stdout
    sys.stderr = sys.__stderr__ = open(2, "w", encoding="utf-8", errors="backslashreplace",  # noqa: SIM115
                                       closefd=False)
    sys.argv = ["solution.py"]
    status = {"status": "ok"}
    try:
        _execute(cfg, prog, status)
    except SystemExit:  # lcb_runner ends the test normally on exit(), whatever the code
        pass
    except MemoryError:
        status.update(status="memory", error="MemoryError")
    except BaseException as exc:  # the program's own error, whatever it is
        status.update(status="runtime_error", error="".join(
            traceback.format_exception_only(type(exc), exc))[-2000:])
    for stream in (sys.stdout, stdout, sys.stderr):
        try:
            stream.flush()
        except OSError as exc:
            if exc.errno == errno.EFBIG:
                status.update(status="output_limit", error="output limit exceeded")
        except BaseException:
            pass
    with contextlib.suppress(BaseException):
        os.write(3, json.dumps(status).encode("utf-8"))
    os._exit(0)


# ---- supervising one test ----------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid):
    """CPU seconds of `pid` and of its children it has reaped, from /proc (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(b")") + 2:].split()
    return sum(int(x) for x in fields[11:15]) / _TICK  # utime stime cutime cstime


def _reaped_cpu():
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


def tree_cpu(base):
    """CPU of everything the current test started: live descendants of the driver (the only thing
    running besides it) plus what the driver has reaped since the test began (`base`)."""
    return sum(_proc_cpu(p) for p in my_descendants()) + _reaped_cpu() - base


def _supervise(pid, cfg, base):
    """Wait for the child; ("exit", status), ("cpu", None) or ("wall", None) when a limit fired."""
    cpu_limit, wall_limit = cfg["timeout_s"], cfg["wall_timeout_s"]
    start = time.monotonic()
    pidfd = None
    with contextlib.suppress(AttributeError, OSError):
        pidfd = os.pidfd_open(pid)
    try:
        step = 0.02
        while True:
            got, status = os.waitpid(pid, os.WNOHANG)
            if got == pid:
                return "exit", status
            wall = time.monotonic() - start
            if wall >= wall_limit:
                return "wall", None
            cpu_left = cpu_limit
            if wall >= 0.05:
                cpu_left = cpu_limit - tree_cpu(base)
                if cpu_left <= 0:
                    return "cpu", None
            wait = max(0.002, min(step, wall_limit - wall, cpu_left))
            if pidfd is not None:
                select.select([pidfd], [], [], wait)
            else:
                time.sleep(min(wait, 0.005))
            step = min(step * 2, 0.1)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _memfd(name, data=b""):
    fd = os.memfd_create(name, 0) if hasattr(os, "memfd_create") else _tmpfile(name)
    if data:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _tmpfile(name):
    import tempfile

    fd, path = tempfile.mkstemp(prefix=name)
    os.unlink(path)
    return fd


def _read_fd(fd, limit):
    os.lseek(fd, 0, os.SEEK_SET)
    chunks, size = [], 0
    while size <= limit:
        chunk = os.read(fd, min(1 << 20, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def run_test(cfg, prog, test_input):
    """Fork, run the program on `test_input` under the limits, and describe what happened."""
    fds = [_memfd("in", test_input.encode("utf-8", "surrogateescape")), _memfd("out"), _memfd("err"),
           _memfd("status")]
    try:
        return _run_test(cfg, prog, test_input, fds)
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def _run_test(cfg, prog, test_input, fds):
    base = _reaped_cpu()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            child({**cfg, "input": test_input}, prog, fds)
        finally:
            os._exit(70)
    how, status = _supervise(pid, cfg, base)
    wall = time.monotonic() - start
    if how != "exit":
        for kill in (os.killpg, os.kill):  # the group, and the child itself in case it never got to setsid()
            with contextlib.suppress(OSError):
                kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    sweep()
    cpu = _reaped_cpu() - base
    out = {"wall_s": wall, "cpu_s": cpu}
    if how == "wall" and cpu < cfg["timeout_s"]:
        return {**out, "status": "timeout", "limit": "wall",
                "error": f"exceeded the {cfg['wall_timeout_s']:g} s wall-clock backstop "
                         f"after {cpu:.2f} s of CPU"}
    if how != "exit" or cpu > cfg["timeout_s"]:
        return {**out, "status": "timeout", "limit": "cpu",
                "error": f"exceeded {cfg['timeout_s']:g} s of CPU time"}
    limit = cfg["max_output_bytes"]
    raw = _read_fd(fds[3], 65536 + limit)
    try:
        st = json.loads(raw.decode("utf-8")) if raw else None
    except ValueError:
        st = None
    stdout = _read_fd(fds[1], limit)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            out.update(status="timeout", limit="cpu", error=f"CPU limit ({signal.Signals(sig).name})")
        elif sig == signal.SIGXFSZ:
            out.update(status="output_limit", error="output limit exceeded")
        else:
            out.update(status="runtime_error", error=f"killed by {signal.Signals(sig).name}")
    elif not isinstance(st, dict) or st.get("status") not in ("ok", "memory", "runtime_error", "output_limit"):
        code = os.WEXITSTATUS(status)
        out.update(status="ok" if code == 0 else "runtime_error", error=f"exit status {code} before finishing")
    else:  # only the fields the child may report; timings are measured here
        out.update({k: st[k] for k in ("status", "error", "result") if k in st})
    if len(stdout) > limit and out["status"] == "ok":
        out.update(status="output_limit", error="output limit exceeded")
    if out["status"] != "ok":
        err = _read_fd(fds[2], 4096)
        if err:
            out["stderr"] = err[-2000:].decode("utf-8", "replace")
    if cfg["mode"] == "stdin":
        out["stdout"] = stdout[:limit].decode("utf-8", "replace")
    return out


def wipe(workdir):
    """Remove everything the previous program left in the working directory."""
    for name in os.listdir(workdir):
        path = os.path.join(workdir, name)
        with contextlib.suppress(OSError):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)


def main():
    """Protocol: setup, then per program `program` (reset, compile, maybe test 0), `test`s, `reset`."""
    setup = receive()
    setup.setdefault("wall_timeout_s", 3 * setup["timeout_s"])
    if setup.get("site_dir"):  # the read-only third-party environment (numpy, ...)
        sys.path.append(setup["site_dir"])
    # Imported before the uid drop: without bwrap's view of the filesystem, later imports may lack access.
    for mod in PRELUDE_MODULES + (EXTRA_PRELOAD if setup.get("preload_all") else ()):
        __import__(mod)
    if setup.get("preload_all") and setup.get("site_dir"):  # the environment may be unreadable after the drop
        for name in sorted(os.listdir(setup["site_dir"])):
            if os.path.exists(os.path.join(setup["site_dir"], name, "__init__.py")):
                with contextlib.suppress(Exception):
                    __import__(name)
    if setup.get("drop_uid") is not None:
        os.setgroups([])
        os.setgid(setup["drop_uid"])
        os.setuid(setup["drop_uid"])
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_DUMPABLE, 0)
    _PRELUDE_NAMES.update(prelude_names())
    gc.freeze()  # forked children then never touch (copy) the driver's objects when they collect
    nproc = setup["nproc"]
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    send({"status": "ready"})
    cfg, prog, dirty = None, None, False
    while True:
        msg = receive()
        if msg is None:
            break
        op = msg.get("op")
        if op == "program":
            if dirty:
                sweep()
                wipe(setup["workdir"])
            dirty = True
            cfg = {**setup, "code": msg["code"], "mode": msg["mode"], "fn_name": msg.get("fn_name")}
            try:
                prog = compile_program(cfg)
            except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as exc:
                prog = None
                send({"status": "syntax_error",
                      "error": "".join(traceback.format_exception_only(type(exc), exc))[-2000:]})
                continue
            send(run_test(cfg, prog, msg["input"]) if "input" in msg else {"status": "ready"})
        elif op == "test" and prog is not None:
            send(run_test(cfg, prog, msg["input"]))
        elif op == "reset":
            sweep()
            wipe(setup["workdir"])
            cfg, prog, dirty = None, None, False
            send({"status": "clean"})
        else:
            send({"status": "protocol_error", "error": f"unexpected message {op!r}"})
    sweep()


if __name__ == "__main__":
    main()
