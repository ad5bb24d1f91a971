"""The read-only third-party environment that sandboxed programs may import (numpy by default).

lcb_runner grades in its own Python environment, so programs there can `import numpy` (its grader
imports numpy itself). The sandbox sees only the interpreter's stdlib, so the packages a stage asks
for (`sandbox_packages`) are installed with `pip install --target` into a directory of their own,
named by a hash of the package list and the Python version, and bind-mounted read-only into the
sandbox. The grader's own virtualenv is never mounted, so Ray, valley or torch are not importable
from model code. `make sandbox-env` (run by `make install`) builds the default environment ahead
of time; any other list is built on first use on each host, under a file lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

DEFAULT_PACKAGES: tuple[str, ...] = ("numpy",)
ENV_ROOT_VAR = "VALLEY_SANDBOX_ENV_ROOT"
COMPLETE = ".valley-sandbox-env.json"


class SandboxEnvError(RuntimeError):
    """The sandbox environment could not be built (pip failed, no network, ...)."""


def env_root() -> Path:
    """Where environments live: $VALLEY_SANDBOX_ENV_ROOT, else ~/.cache/valley/sandbox-env."""
    root = os.environ.get(ENV_ROOT_VAR)
    return Path(root) if root else Path.home() / ".cache" / "valley" / "sandbox-env"


def env_key(packages: Sequence[str]) -> str:
    """Stable name of an environment: the package specs (sorted) and the interpreter's version."""
    spec = {"packages": sorted(p.strip() for p in packages), "python": list(sys.version_info[:2])}
    return hashlib.sha256(json.dumps(spec).encode("utf-8")).hexdigest()[:16]


def env_dir(packages: Sequence[str]) -> Path:
    return env_root() / env_key(packages)


def ensure_env(packages: Sequence[str], *, install: bool = True) -> str | None:
    """The directory holding `packages` (built now when missing and `install`), or None for no packages.

    Concurrent callers on one host (Ray workers) serialise on a lock file; the environment appears
    under its final name only once pip has succeeded, so a half-built one is never mounted.
    """
    packages = [p for p in packages if p.strip()]
    if not packages:
        return None
    target = env_dir(packages)
    if (target / COMPLETE).exists():
        return str(target)
    if not install:
        raise SandboxEnvError(f"sandbox environment for {packages} is not built at {target}; run "
                              "`make sandbox-env` or `python -m valley.grade.sandbox_env PACKAGE...`")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / COMPLETE).exists():
            return str(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                   "--no-compile", "--target", str(tmp), *packages]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SandboxEnvError(f"pip could not install {packages} for the sandbox: "
                                      f"{proc.stderr.strip()[-1500:]}")
            # bytecode now, as the sandbox mounts the directory read-only and runs with -B
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(tmp)], capture_output=True)
            (tmp / COMPLETE).write_text(json.dumps({"packages": packages, "python": sys.version}) + "\n")
            os.chmod(tmp, 0o755)
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(target)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m valley.grade.sandbox_env [PACKAGE...]`: build an environment and print its path."""
    packages = list(argv if argv is not None else sys.argv[1:]) or list(DEFAULT_PACKAGES)
    print(ensure_env(packages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
