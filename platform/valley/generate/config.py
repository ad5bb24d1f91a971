"""Configuration of the generate stage: which problems, which model, how to sample, how to serve.

Everything that can change a generated token is hashed (model, problems, filters, prompt, sampling,
seed, backend); how the work is spread (replicas, batch size, pool mode, retries, part size and flush
interval) is not, so re-running with more replicas reuses finished outputs.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from valley import legacy
from valley.config import StageConfig
from valley.generate import releases
from valley.generate.prompts import LCB_SYSTEM_MESSAGE


class ProblemFilter(BaseModel):
    """Which LCB problems to evaluate on; `None` means "no restriction" for that field.

    LCB rows may lack `platform` or `contest_date` (the shared copies do; see `problem_metadata`), and
    a release is only known for files named like code_generation_lite's (test.jsonl, test2.jsonl, ...).
    A filter that needs a missing value follows `missing`: "exclude" drops the problem, "include" keeps
    it; either way the count is reported in the stage result, never silent.
    """

    model_config = ConfigDict(extra="forbid")

    release_version: str | None = None  # by file: release_v1..release_v6 (cumulative), v3 (one increment), v2_v5
    start_date: str | None = None  # ISO date, inclusive: contest_date >= start_date
    end_date: str | None = None  # ISO date, inclusive: contest_date <= end_date (whole day)
    # By contest date: an LCB release as a named date window (generate/releases.py): release_v1..release_v6,
    # v1..v6 or vA_vB. It fills start_date/end_date, and only those dates are hashed (the name is never
    # dumped), so a preset and the same dates written out share their outputs and an unset preset changes no
    # hash. Dates given beside a preset must equal the preset's: a silent intersection would hide a typo.
    window: str | None = Field(default=None, exclude=True)
    difficulties: list[str] | None = None  # easy | medium | hard
    platforms: list[str] | None = None  # atcoder | codeforces | leetcode
    question_ids: list[str] | None = None
    missing: Literal["exclude", "include"] = "exclude"
    limit: int | None = Field(default=None, ge=1)  # first `limit` problems after filtering (sorted by id)

    @field_validator("start_date", "end_date", mode="before")
    @classmethod
    def _iso_day(cls, value: Any) -> Any:
        """YAML reads an unquoted 2024-08-01 as a date; either way the value must start with an ISO day."""
        if isinstance(value, dt.date):
            return value.isoformat()
        if isinstance(value, str):
            try:
                dt.date.fromisoformat(value[:10])
            except ValueError as exc:
                raise ValueError(f"{value!r} is not an ISO date (YYYY-MM-DD)") from exc
        return value

    @model_validator(mode="after")
    def _resolve_window(self) -> ProblemFilter:
        if self.window is not None:
            preset = releases.resolve(self.window)
            for name, given, wanted in (("start_date", self.start_date, preset.start),
                                        ("end_date", self.end_date, preset.end)):
                if given is not None and given[:10] != wanted:
                    raise ValueError(f"window {self.window!r} is {preset} but {name} is {given}; give the preset "
                                     "or the dates (or dates equal to the preset's), not both")
            self.start_date, self.end_date = preset.start, preset.end
        if self.start_date and self.end_date and self.start_date[:10] > self.end_date[:10]:
            raise ValueError(f"start_date {self.start_date} is after end_date {self.end_date}")
        return self

    def window_label(self) -> str:
        """How a report names the window: the date preset (also for the same dates written out) or the
        dates, and the release files when `release_version` picks them."""
        if self.start_date or self.end_date:
            dates = f"{(self.start_date or '')[:10]}..{(self.end_date or '')[:10]}"
            preset = self.window or releases.preset_of(self.start_date, self.end_date)
            label = f"{preset} ({dates})" if preset else dates
        else:
            label = "all contest dates"
        return f"files of {self.release_version}, {label}" if self.release_version else label


class PoolConfig(BaseModel):
    """How generation is spread over Ray: replicas x tensor parallel, fed continuously (stream), by Ray
    Data batches, by Ray Serve, or in-process."""

    model_config = ConfigDict(extra="forbid")

    # stream = each replica's engine fed problem by problem, results per problem (generate/stream_pool.py);
    # data = Ray Data batches, each replica one batch at a time; serve = a Ray Serve deployment;
    # local = the backend in this process (no Ray)
    mode: Literal["stream", "data", "serve", "local"] = "stream"
    replicas: int = Field(default=1, ge=1)  # stream/data: actors; Serve: max replicas
    min_replicas: int = Field(default=1, ge=0)  # Serve autoscaling floor
    tensor_parallel_size: int = Field(default=1, ge=1)  # GPUs per vLLM engine
    batch_size: int = Field(default=8, ge=1)  # requests per backend call (stream: per transformers micro-batch)
    # stream: samples a replica holds at once (whole problems; one larger problem still goes alone).
    # Default: 256 for vLLM (its default max_num_seqs, so the engine's batch stays full while the driver
    # refills it), 2 x batch_size for transformers (one micro-batch running, the next one queued).
    max_in_flight: int | None = Field(default=None, ge=1)
    num_cpus: float = Field(default=1.0, ge=0)  # per replica
    num_gpus: float | None = None  # per replica; default: tensor_parallel_size for vllm, 0 otherwise
    max_retries: int = Field(default=3, ge=0)  # a failed replica is restarted and its batch/problems re-sent
    target_ongoing_requests: float = Field(default=2.0, gt=0)  # Serve autoscaling target per replica
    app_name: str = "valley-generate"  # Serve application name
    keep_serving: bool = False  # Serve: leave the deployment up after the stage (a long-lived pool)
    # seconds without progress before the watchdog fails the stage; None: $VALLEY_STALL_TIMEOUT_S, else
    # 600 on CPU and 1800 on GPU (valley.watchdog.default_timeout)
    stall_timeout_s: float | None = Field(default=None, gt=0)

    def in_flight(self, backend: str) -> int:
        """Samples one stream replica may hold at once (`max_in_flight`, else the backend's default)."""
        if self.max_in_flight is not None:
            return self.max_in_flight
        return 256 if backend == "vllm" else 2 * self.batch_size

    # Fault injection (the old name crash_once_file still loads): the first replica call that finds this
    # file missing creates it and kills its own process, so tests can show that a failed replica is
    # replaced and its requests retried. `pool` is outside the hash, so this never changes it.
    fault_crash_once_file: str | None = Field(
        default=None, validation_alias=legacy.fault_alias("fault_crash_once_file", "crash_once_file"))


class GenerateConfig(StageConfig):
    """LCB generation: problems -> prompts (model's chat template) -> n samples each -> samples Parquet.

    Sampling fits reasoning students: a sample ends at the model's end-of-sequence token(s) or after
    `max_tokens`, never at a stop string (lcb_runner's CLI stops at "###" with 2K tokens, which cuts a
    reasoning trace off mid-thought), so there is deliberately no `stop` option. Whether `max_tokens` plus
    the longest prompt fits the model is checked at stage start (`valley.generate.context`).
    """

    model: str  # Hugging Face directory (a train-stage export or any HF model dir)
    problems: list[str]  # LCB JSONL files (code_generation_lite rows) and/or Parquet problems tables
    problem_metadata: list[str] = []  # lcb_runner *_eval_all.json(.gz) files to fill platform/contest_date
    filters: ProblemFilter = ProblemFilter()
    system_prompt: str | None = LCB_SYSTEM_MESSAGE  # None: no system message (template default applies)
    n: int = Field(default=1, ge=1)
    temperature: float = Field(default=0.2, ge=0)  # lcb_runner's default
    top_p: float = Field(default=0.95, gt=0, le=1)  # lcb_runner's default
    max_tokens: int = Field(default=32768, ge=1)
    seed: int = 0
    backend: Literal["transformers", "vllm"] = "transformers"
    dtype: str = "auto"  # torch dtype name for the weights; auto = the checkpoint's (fp32 on CPU)
    max_model_len: int | None = Field(default=None, ge=1)  # context length (prompt + output); default: the model's
    # Model-config overrides for the evaluated model (vLLM's `hf_overrides`, transformers' config kwargs),
    # e.g. YaRN to reach a 32K completion budget on a 32K-window model; `rope_scaling` is a shorthand for
    # hf_overrides["rope_scaling"]. Both change tokens, so both are hashed (left out while None).
    rope_scaling: dict[str, Any] | None = None
    hf_overrides: dict[str, Any] | None = None
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    run_id: str | None = None  # samples.run_id; default "<name>-<hash12>"
    pool: PoolConfig = PoolConfig()
    part_size: int = Field(default=256, ge=1)  # samples per Parquet part (parts close on problem boundaries)
    # a part is also closed once finished problems have waited this long, so a long stage streams its
    # results to disk (and to a grade node following it) before part_size samples are done
    part_flush_s: float = Field(default=60.0, gt=0)

    hash_exclude: ClassVar[frozenset[str]] = frozenset({"name", "pool", "part_size", "part_flush_s",
                                                        "gpu_memory_utilization"})
    # added after configs were hashed: None hashes as before the fields existed
    hash_exclude_if_none: ClassVar[frozenset[str]] = legacy.GENERATE_HASHED_ONLY_WHEN_SET

    @model_validator(mode="after")
    def _check(self) -> GenerateConfig:
        if not self.problems:
            raise ValueError("problems must name at least one LCB JSONL file or problems Parquet table")
        if self.pool.min_replicas > self.pool.replicas:
            raise ValueError("pool.min_replicas must not exceed pool.replicas")
        if self.rope_scaling is not None:
            if not any(k in self.rope_scaling for k in ("rope_type", "type")):
                raise ValueError("rope_scaling needs a rope_type (e.g. {rope_type: yarn, factor: 4.0, "
                                 "original_max_position_embeddings: 32768})")
            other = (self.hf_overrides or {}).get("rope_scaling")
            if other is not None and other != self.rope_scaling:
                raise ValueError("rope_scaling and hf_overrides.rope_scaling differ; set it in one place")
        return self

    def model_overrides(self) -> dict[str, Any]:
        """What goes on top of the model's config.json: hf_overrides plus rope_scaling (empty: none)."""
        out = dict(self.hf_overrides or {})
        if self.rope_scaling is not None:
            out["rope_scaling"] = dict(self.rope_scaling)
        return out

    def resolved_run_id(self) -> str:
        return self.run_id or f"{self.name}-{self.config_hash()[:12]}"

    def run_resources(self) -> dict[str, float]:
        """What the pool holds while it generates: every replica's CPUs and GPUs."""
        per_replica = {"CPU": float(self.pool.num_cpus), "GPU": self.replica_gpus()}
        return {k: v * self.pool.replicas for k, v in per_replica.items() if v}

    def replica_gpus(self) -> float:
        if self.pool.num_gpus is not None:
            return self.pool.num_gpus
        return float(self.pool.tensor_parallel_size) if self.backend == "vllm" else 0.0
