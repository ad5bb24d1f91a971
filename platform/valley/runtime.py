"""One place that starts or joins Ray, so every entry point behaves the same.

Embedded local Ray by default; a cluster when an address is given (argument or RAY_ADDRESS, which
`ray job submit` sets for the driver). Logs stay quiet unless the user asks for more.

Clusters with token authentication (Ray turns it on for `ray start --head` when a token file exists):
a client sends the token only with RAY_AUTH_MODE=token, exactly like `ray job submit`; a connection
refused for want of it fails at once with what to set, instead of Ray's retries and "Failed to connect".
Ray jobs run in a copy of `--working-dir` without git-ignored files; `enter_job_dir` (`--chdir DIR`
on the `jobs/` entrypoints) runs the driver and the job's workers in DIR instead.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import ray

from valley.errors import ConfigError

AUTH_MODE_ENV = "RAY_AUTH_MODE"
JOB_DIR_ENV = "VALLEY_JOB_DIR"  # set by `--chdir`; Ray workers of the job start there too
_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # what Ray's job supervisor gives the entrypoint


def extensions_dir() -> Path:
    """Where JIT-built torch extensions go (DeepSpeed's ops, valley.train.ops): `$TORCH_EXTENSIONS_DIR` if the
    user set it, else inside the environment (`<venv>/torch_extensions`), so nodes sharing a home directory
    never share build locks."""
    explicit = os.environ.get("TORCH_EXTENSIONS_DIR")
    return Path(explicit) if explicit else Path(sys.prefix) / "torch_extensions"


def set_extensions_dir() -> Path:
    """Point torch's cpp_extension at `extensions_dir()` for this process and the processes it starts."""
    path = extensions_dir()
    os.environ["TORCH_EXTENSIONS_DIR"] = str(path)
    return path


def init(address: str | None = None, *, num_cpus: int | None = None, quiet: bool = True, **kwargs: Any) -> dict:
    """Start an embedded Ray (default) or connect to `address`; idempotent within a process.

    Returns the dict `ray.cluster_resources()` reports, so callers can size their work.
    """
    if ray.is_initialized():
        return ray.cluster_resources()
    address = address or os.environ.get("RAY_ADDRESS") or None
    init_kwargs: dict[str, Any] = {
        "address": address,
        "ignore_reinit_error": True,
        "logging_level": logging.WARNING if quiet else logging.INFO,
        "log_to_driver": not quiet,
    }
    if address is None:
        # Only an embedded cluster may be sized or have its dashboard toggled.
        init_kwargs["include_dashboard"] = False
        if num_cpus is not None:
            init_kwargs["num_cpus"] = num_cpus
    else:
        check_cluster_auth(address)
        if os.environ.get(JOB_DIR_ENV):
            init_kwargs["runtime_env"] = _job_dir_runtime_env(kwargs.pop("runtime_env", None))
    init_kwargs.update(kwargs)
    if quiet:
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    # JIT-built torch extensions (and their build locks) live inside this environment, not the user's home;
    # set before ray.init so an embedded cluster's workers inherit it (valley.train.ops)
    set_extensions_dir()
    from ray.exceptions import AuthenticationError

    try:
        ray.init(**init_kwargs)
    except AuthenticationError as exc:  # e.g. RAY_AUTH_MODE=token and no token anywhere
        raise ConfigError(auth_help(address or "the new local cluster", str(exc))) from exc
    if quiet:
        _quiet_ray_data()
    return ray.cluster_resources()


def _quiet_ray_data() -> None:
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    try:
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
    except AttributeError:  # older Ray Data without these knobs
        pass


def shutdown() -> None:
    """Stop the Ray connection this process holds (the embedded cluster too, when we started it)."""
    if ray.is_initialized():
        ray.shutdown()


# ---- token authentication ----------------------------------------------------------------------
def token_source() -> str | None:
    """Where Ray would read a token from in this process (its own order), or None; never reads the token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return f"RAY_AUTH_TOKEN_PATH ({path})" if _non_empty(path) else None
    default = os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    return "~/.ray/auth_token" if _non_empty(default) else None


def _non_empty(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except OSError:
        return False


def auth_help(address: str, detail: str) -> str:
    """What to set when a cluster refused us for token authentication."""
    mode = os.environ.get(AUTH_MODE_ENV) or "unset"
    source = token_source()
    lines = [f"cannot join the Ray cluster at {address}: token authentication ({detail.splitlines()[0][:160]})."]
    if mode.lower() != "token":
        lines.append(f"Set {AUTH_MODE_ENV}=token (it is {mode}) so that the token is sent, as for `ray job submit`.")
    if source is None:
        lines.append("No token was found here: Ray reads it from RAY_AUTH_TOKEN, from the file named by "
                     "RAY_AUTH_TOKEN_PATH, or from ~/.ray/auth_token; `ray get-auth-token` on the head prints "
                     "the cluster's token.")
    elif mode.lower() == "token":
        lines.append(f"The token from {source} is not the cluster's: `ray get-auth-token` on the head prints "
                     "the right one.")
    return " ".join(lines)


def check_cluster_auth(address: str) -> None:
    """Ask the cluster's GCS once (well under a second) whether it accepts us, so that a missing or wrong
    token is reported at once with what to set. Anything else is left to `ray.init` to report."""
    if address.startswith("ray://"):
        return  # Ray Client has its own handshake
    try:
        from ray._private.authentication import authentication_token_setup as ray_auth
        from ray._private.services import canonicalize_bootstrap_address
        from ray._raylet import GcsClient
        from ray.exceptions import AuthenticationError

        gcs_address = canonicalize_bootstrap_address(address)
    except Exception:  # noqa: BLE001 - an address this cannot parse (or another Ray) is ray.init's
        return
    if gcs_address is None:
        return
    try:
        if address == "auto":  # as ray.init does: the local cluster found this way gets the local token
            ray_auth.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        # Token mode without a token must stop here: Ray's gRPC client aborts the process on it.
        ray_auth.ensure_token_if_auth_enabled(None, create_token_if_missing=False)
        GcsClient(address=gcs_address)
    except AuthenticationError as exc:
        raise ConfigError(auth_help(address, str(exc))) from exc
    except Exception as exc:  # noqa: BLE001 - unreachable: say so now rather than retry a second time
        raise ConfigError(f"cannot reach a Ray cluster at {address} ({gcs_address}): {exc}") from exc


# ---- Ray jobs and their working directory ------------------------------------------------------
def enter_job_dir(argv: list[str]) -> list[str]:
    """Take `--chdir DIR` out of a `jobs/` entrypoint's arguments and run there: relative config, input
    and storage paths then resolve as they would from DIR, for the driver and (through a worker setup
    hook) for every Ray worker of the job. Needed because a job's own working directory is an upload of
    `--working-dir` that leaves out git-ignored files such as demo-data/."""
    rest, target = [], None
    args = iter(argv)
    for arg in args:
        if arg == "--chdir":
            target = next(args, None)
            if target is None:
                raise SystemExit("--chdir needs a directory")
        elif arg.startswith("--chdir="):
            target = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    if target is not None:
        target = os.path.abspath(target)
        if not os.path.isdir(target):
            raise SystemExit(f"--chdir {target}: no such directory on this node (is the head on another machine?)")
        os.chdir(target)
        os.environ[JOB_DIR_ENV] = target
    return rest


def _job_dir_runtime_env(runtime_env: dict | None) -> dict:
    env = dict(runtime_env or {})
    env["env_vars"] = {**env.get("env_vars", {}), JOB_DIR_ENV: os.environ[JOB_DIR_ENV]}
    env["worker_process_setup_hook"] = "valley.runtime.enter_job_dir_in_worker"
    return env


def enter_job_dir_in_worker() -> None:
    """Ray worker setup hook: start in the job's `--chdir` directory when this node has it."""
    target = os.environ.get(JOB_DIR_ENV)
    if target and os.path.isdir(target):
        os.chdir(target)


def job_path_hint(path: str) -> str:
    """Why a local path is missing when it lies in a Ray job's uploaded working directory ('' otherwise),
    for error messages about missing inputs."""
    if "://" in path or os.environ.get(JOB_DIR_ENV):
        return ""
    try:
        runtime_env = json.loads(os.environ.get(_JOB_CONFIG_ENV, "{}")).get("runtime_env") or {}
    except ValueError:
        return ""
    if not runtime_env.get("working_dir"):
        return ""
    cwd = os.getcwd()
    if os.path.isabs(path) and os.path.commonpath([cwd, os.path.abspath(path)]) != cwd:
        return ""
    return ("; this runs inside a Ray job, whose working directory is the upload of --working-dir, and that "
            "leaves out git-ignored files such as demo-data/: add --chdir \"$PWD\" to the job's arguments "
            "when the head shares your filesystem, or use absolute paths or URIs (s3://...) that every node "
            "can read")
