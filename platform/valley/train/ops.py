"""DeepSpeed's compiled ops: which ones a run needs, which are prebuilt, and no JIT build at training time.

DeepSpeed compiles an op with torch's cpp_extension the first time it is used, into
`$TORCH_EXTENSIONS_DIR/<op>/` (default `~/.cache/torch_extensions/…`) behind a `lock` file that torch's
`FileBaton` creates and deletes. A process killed during the build leaves the lock behind, and every later
process waits on it forever without a word. On CPU the op that bit was `deepspeed_shm_comm`, which
`deepspeed.init_distributed` builds unconditionally although only AutoTP *inference*
(`inference_all_reduce`) ever uses it; training's collectives go through gloo. So:

* ops that bring nothing to training are switched off before DeepSpeed looks at them (`DISABLED_OPS`);
* ops a config needs (CPU Adam for an offloaded optimizer, async I/O for NVMe offload, fused Adam for a
  DeepSpeed optimizer on GPU) must be prebuilt at install (`DS_BUILD_<OP>=1`, see the Makefile) — a run
  that would compile one fails at once with the fix named instead;
* the extensions directory lives inside the environment, not in the user's (possibly shared) home;
* leftover locks that no live process holds are removed before DeepSpeed starts (`clear_stale_locks`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from valley.runtime import extensions_dir, set_extensions_dir  # noqa: F401 - set_extensions_dir: the ops' API too

log = logging.getLogger(__name__)

LOCK_NAME = "lock"  # torch.utils.file_baton.FileBaton's file inside an extension's build directory
# op -> why it is switched off; only on the accelerator named
DISABLED_OPS: dict[str, dict[str, str]] = {
    "cpu": {"deepspeed_shm_comm": "shared-memory all-reduce for AutoTP inference only; training uses gloo"},
}
# op -> the install-time switch that prebuilds it
BUILD_VARS = {"cpu_adam": "DS_BUILD_CPU_ADAM", "fused_adam": "DS_BUILD_FUSED_ADAM", "async_io": "DS_BUILD_AIO",
              "cpu_adagrad": "DS_BUILD_CPU_ADAGRAD", "cpu_lion": "DS_BUILD_CPU_LION",
              "fused_lamb": "DS_BUILD_FUSED_LAMB", "fused_lion": "DS_BUILD_FUSED_LION",
              "deepspeed_shm_comm": "DS_BUILD_SHM_COMM"}


class OpsError(RuntimeError):
    """A run needs a DeepSpeed op this environment did not prebuild."""


def legacy_extensions_dirs() -> list[Path]:
    """The per-user default torch used before (where a killed build's lock may still sit)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torch_extensions"
    return [p for p in root.glob("py*") if p.is_dir()] if root.is_dir() else []


def _installed_info() -> tuple[dict[str, bool], str | None]:
    """DeepSpeed's record of the ops compiled at install and the accelerator they were built for, read
    from its `git_version_info_installed.py` without importing DeepSpeed (which would import torch)."""
    spec = importlib.util.find_spec("deepspeed")
    if spec is None or not spec.submodule_search_locations:
        return {}, None
    info = Path(next(iter(spec.submodule_search_locations))) / "git_version_info_installed.py"
    if not info.exists():
        return {}, None
    namespace: dict[str, Any] = {}
    exec(compile(info.read_text(), str(info), "exec"), namespace)  # noqa: S102 - DeepSpeed's own constants file
    return dict(namespace.get("installed_ops", {})), namespace.get("accelerator_name")


def prebuilt_ops(accelerator: str) -> dict[str, bool]:
    """op -> compiled at install for `accelerator` ("cpu" or "cuda"); DeepSpeed only loads a prebuilt op
    on the accelerator it was built for, anything else it would JIT-compile."""
    ops, built_for = _installed_info()
    return {op: bool(ok) and built_for == accelerator for op, ok in ops.items()}


def needed_ops(ds_config: dict[str, Any], accelerator: str) -> dict[str, str]:
    """op -> why this DeepSpeed config will load it (derived from the config DeepSpeed itself reads)."""
    zero = ds_config.get("zero_optimization", {}) or {}
    offload_opt = (zero.get("offload_optimizer") or {}).get("device", "none")
    offload_par = (zero.get("offload_param") or {}).get("device", "none")
    need: dict[str, str] = {}
    optimizer = ds_config.get("optimizer")
    if optimizer:
        kind = str(optimizer.get("type", "")).lower()
        torch_adam = bool((optimizer.get("params") or {}).get("torch_adam", False))
        if kind in {"adam", "adamw"} and not torch_adam:
            if offload_opt in {"cpu", "nvme"}:
                need["cpu_adam"] = "optimizer state offloaded to CPU (DeepSpeedCPUAdam)"
            elif accelerator == "cuda":
                need["fused_adam"] = "DeepSpeed's Adam on GPU (FusedAdam)"
        elif kind == "adagrad" and offload_opt in {"cpu", "nvme"}:
            need["cpu_adagrad"] = "optimizer state offloaded to CPU (DeepSpeedCPUAdagrad)"
        elif kind == "lion":
            need["cpu_lion" if offload_opt in {"cpu", "nvme"} else "fused_lion"] = "DeepSpeed's Lion optimizer"
        elif kind == "lamb":
            need["fused_lamb"] = "DeepSpeed's LAMB optimizer"
    if "nvme" in {offload_opt, offload_par}:
        need["async_io"] = "offload to NVMe (libaio)"
    return need


def check_prebuilt(ds_config: dict[str, Any], accelerator: str) -> None:
    """Fail at once (not after minutes of compiling, or forever behind a lock) when a needed op would be
    JIT-compiled; the message names the install switch that prebuilds it."""
    have = prebuilt_ops(accelerator)
    missing = {op: why for op, why in needed_ops(ds_config, accelerator).items() if not have.get(op)}
    if missing:
        switches = " ".join(f"{BUILD_VARS.get(op, 'DS_BUILD_' + op.upper())}=1" for op in missing)
        listing = "; ".join(f"{op} ({why})" for op, why in missing.items())
        raise OpsError(f"this run needs DeepSpeed ops that are not prebuilt for the {accelerator} accelerator: "
                       f"{listing}. Compiling them at training time is off (slow, needs a compiler on every "
                       f"node, and a killed build blocks later runs); reinstall DeepSpeed with them built: "
                       f"`make install DS_BUILD=\"{switches}\"`")


def disable_unneeded_ops(accelerator: str) -> list[str]:
    """Mark the ops in `DISABLED_OPS` incompatible in DeepSpeed's op table, so `init_distributed` skips
    building them. DeepSpeed keeps that table in `deepspeed.ops.__compatible_ops__` (probed once per
    process, then cached and read by every builder user); must run before `deepspeed.init_distributed`."""
    off = DISABLED_OPS.get(accelerator, {})
    if not off:
        return []
    import deepspeed.ops

    table = deepspeed.ops.__compatible_ops__
    for op in off:
        table[op] = False
    return sorted(off)


def _open_holders(path: Path) -> list[int]:
    """Pids on this host with `path` open (FileBaton keeps its lock's fd open until it releases it)."""
    target = os.path.realpath(path)
    holders = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                try:
                    if os.readlink(fd) == target:
                        holders.append(int(proc.name))
                        break
                except OSError:
                    continue
        except OSError:  # the process ended, or is not ours to look at
            continue
    return holders


def find_locks(dirs: list[Path] | None = None) -> list[dict[str, Any]]:
    """Every extension build lock under `dirs` (default: ours and torch's per-user default), with the
    pids on this host that hold it open (empty: nobody here does)."""
    found = []
    for root in dirs if dirs is not None else [extensions_dir(), *legacy_extensions_dirs()]:
        if not root.is_dir():
            continue
        for lock in sorted(root.glob(f"*/{LOCK_NAME}")):
            found.append({"path": str(lock), "op": lock.parent.name, "holders": _open_holders(lock)})
    return found


def clear_stale_locks(dirs: list[Path] | None = None) -> list[str]:
    """Remove build locks no live process on this host holds (what a killed build leaves behind); returns
    their paths. A lock held by a live process is left alone (that build is really running)."""
    removed = []
    for lock in find_locks(dirs):
        if lock["holders"]:
            log.warning("extension build lock %s is held by pid(s) %s: a build is running", lock["path"],
                        lock["holders"])
            continue
        try:
            os.remove(lock["path"])
        except FileNotFoundError:
            continue  # released meanwhile
        log.warning("removed stale extension build lock %s (no live process holds it: a killed build left it)",
                    lock["path"])
        removed.append(lock["path"])
    return removed


def prepare_worker(ds_config: dict[str, Any], accelerator: str) -> dict[str, Any]:
    """Everything a training worker does before its first DeepSpeed call: extensions dir inside the
    environment, stale locks gone, needed ops prebuilt (else fail now), unneeded ops off."""
    ext = set_extensions_dir()
    removed = clear_stale_locks()
    check_prebuilt(ds_config, accelerator)
    disabled = disable_unneeded_ops(accelerator)
    return {"extensions_dir": str(ext), "removed_locks": removed, "disabled": disabled}


def op_report(accelerator: str | None = None, ds_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """For `valley doctor`: which DeepSpeed ops are prebuilt, needed (by `ds_config`, if given), disabled,
    and where JIT builds would go (plus any build locks there and who holds them)."""
    installed, built_for = _installed_info()
    if accelerator is None:
        accelerator = os.environ.get("DS_ACCELERATOR") or built_for or "cpu"
    ext = extensions_dir()
    return {
        "accelerator": accelerator,
        "prebuilt_for": built_for,
        "prebuilt": sorted(op for op, ok in prebuilt_ops(accelerator).items() if ok),
        "not_prebuilt": sorted(op for op, ok in installed.items() if not ok and op != "deepspeed_not_implemented"),
        "needed": needed_ops(ds_config, accelerator) if ds_config is not None else {},
        "disabled": dict(DISABLED_OPS.get(accelerator, {})),
        "extensions_dir": str(ext),
        "jit_built": sorted(p.name for p in ext.iterdir() if p.is_dir()) if ext.is_dir() else [],
        "locks": find_locks(),
    }


def summary(report: dict[str, Any]) -> str:
    """One line for the install log and `valley doctor`."""
    off = ", ".join(f"{op} ({why})" for op, why in report["disabled"].items()) or "none"
    locks = [lock["path"] for lock in report["locks"]]
    return (f"DeepSpeed ops for {report['accelerator']}: prebuilt {', '.join(report['prebuilt']) or 'none'}; "
            f"switched off {off}; JIT builds (none expected) would go to {report['extensions_dir']}"
            f"{'; build locks: ' + ', '.join(locks) if locks else ''}")


if __name__ == "__main__":
    print(summary(op_report()))
