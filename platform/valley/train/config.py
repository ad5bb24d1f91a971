"""`TrainConfig`: the paper's SFT recipe as defaults, plus the knobs a cluster run needs.

Defaults follow He et al. (2025): global batch 128, lr 8e-5, warmup ratio 0.10, AdamW, 5 epochs, sequences
up to the data stage's length (32,768 tokens in the paper's configs), loss on assistant tokens only averaged
per token over the global batch. What a "batch" counts is `batch_unit` (train/step_arithmetic.py).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from valley import legacy
from valley.config import StageConfig
from valley.errors import ConfigError
from valley.train.step_arithmetic import BatchUnit, LastStep


class TrainConfig(StageConfig):
    """`valley train`: supervised fine-tuning on the data stage's packed rows with Ray Train + DeepSpeed."""

    data: str  # the data stage's output dir (relative to the storage root, or absolute / a URI)
    subset: str = "all"  # which tokenized subset of that dir to train on
    model: str  # HF dir to start from: a base model, or a previous train run's dir/export (stage 2)

    # ---- the recipe ----
    epochs: int = Field(default=5, gt=0)
    global_batch_size: int = Field(default=128, gt=0)  # per optimizer step, in `batch_unit`
    # What global_batch_size counts: `rows` (packed sequences, a fixed number of micro-batches per step) or
    # `examples` (documents: each step packs its next N documents into as many rows as they need, and
    # gradient accumulation follows per step). None: rows, as before the field existed (same config hash).
    batch_unit: BatchUnit | None = None
    # An epoch's incomplete last group: `partial` trains it as one smaller step, `drop` leaves it out (it
    # is reshuffled into the next epoch). None: drop for rows (as before the field existed), partial for
    # examples.
    last_step: LastStep | None = None
    micro_batch_size: int = Field(default=1, gt=0)  # rows per forward pass per worker, in either unit
    learning_rate: float = Field(default=8e-5, gt=0)
    warmup_ratio: float = Field(default=0.10, ge=0, lt=1)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)  # floor of the decay, as a fraction of the peak
    weight_decay: float = Field(default=0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = Field(default=1e-8, gt=0)
    max_grad_norm: float = Field(default=1.0, ge=0)  # 0 disables clipping
    # rows longer than this are an input error; None: the data stage's seq_len (its manifest's)
    max_seq_len: int | None = Field(default=None, gt=8)
    seed: int = 0
    shuffle: bool = True  # reshuffle rows or examples every epoch (seeded: a restart sees the same order)

    # ---- numerics / memory ----
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    zero_stage: Literal[0, 1, 2, 3] = 3
    gradient_checkpointing: bool = True
    offload_optimizer: bool = False
    offload_params: bool = False
    # ZeRO-3 gathers each decoder block's parameters as one unit (DeepSpeed's z3 leaf modules; the blocks are
    # the classes transformers names in `_no_split_modules`): one hook pair per block instead of one per
    # linear layer and norm. Hooks cost the same whatever the row length, so this matters on short rows
    # (10% of a 1024-token CPU step); the sums are the same, so it is not hashed.
    zero3_leaf_blocks: bool = True
    # LM-head + loss over at most this many positions at a time (see train/chunked_loss.py): bounds the
    # logits memory of long rows; smaller is leaner, larger has fewer, bigger matmuls
    loss_chunk_tokens: int = Field(default=4096, gt=0)
    # packed rows: flex_attention (document BlockMask, no extension; GPU only, torch has no CPU backward),
    # flash_attention_2 (varlen, needs the flash-attn wheel), sdpa/eager (O(L²) mask). auto: FA2 where its
    # wheel is installed, else FlexAttention on GPU; SDPA on CPU
    attn_implementation: Literal["auto", "flash_attention_2", "flex_attention", "sdpa", "eager"] = "auto"
    deepspeed: dict[str, Any] = Field(default_factory=dict)  # deep-merged over the generated DS config
    export_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"  # auto: the training precision
    # Also export the model after every epoch but the last (`model-epoch<k>/`), for per-epoch evaluation.
    # Part of the hash: a finished run promises those directories.
    export_every_epoch: bool = False

    # ---- cluster / execution (do not change the result) ----
    num_workers: int = Field(default=8, gt=0)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0)
    # CPU training: torch threads per worker. None: what Ray gives (cpus_per_worker); more helps when a
    # worker holds a CPU less than it may use because Ray Data's readers need one beside it (small nodes).
    torch_threads: int | None = Field(default=None, gt=0)
    resources_per_worker: dict[str, float] = Field(default_factory=dict)  # extra, e.g. {"accelerator_type:H100": 0.01}
    checkpoint_every_steps: int = Field(default=200, gt=0)
    checkpoints_to_keep: int = Field(default=2, gt=0)
    max_failures: int = Field(default=3, ge=-1)
    log_every_steps: int = Field(default=1, gt=0)  # a line in the worker log (cheap)
    # Metrics to Ray Train (TensorBoard, MLflow, W&B callbacks). Each report is a collective across the workers
    # that cost about 1.3 s on CPU here: every step it tripled a small model's step time. Checkpoints and
    # the last step are always reported; metrics.jsonl keeps every step.
    report_every_steps: int = Field(default=10, gt=0)
    peak_tflops: float | None = None  # per device, for MFU; None: looked up from the device name
    # Watchdog: the stage fails, naming the phase and worker, when no worker reports progress (a start-up
    # phase or a step) for this long; None: $VALLEY_STALL_TIMEOUT_S, else 600 s on CPU, 1800 s on GPU.
    stall_timeout_s: float | None = Field(default=None, gt=0)
    # Fault injection (fault_*; the old debug_* names still load): rank 1 (or 0 with one worker) exits
    # hard once, right after this step's checkpoint.
    fault_kill_at_step: int | None = Field(
        default=None, validation_alias=legacy.fault_alias("fault_kill_at_step"))
    # Fault injection: rank 1 (or 0 with one worker) sleeps fault_stall_s on entering this phase (see
    # loop.PHASES), so the watchdog has a stall to catch.
    fault_stall_phase: str | None = Field(
        default=None, validation_alias=legacy.fault_alias("fault_stall_phase"))
    fault_stall_s: float = Field(default=3600.0, ge=0,
                                 validation_alias=legacy.fault_alias("fault_stall_s"))

    hash_exclude: ClassVar[frozenset[str]] = frozenset(
        {"name", "cpus_per_worker", "torch_threads", "zero3_leaf_blocks", "resources_per_worker", "checkpoints_to_keep", "max_failures",
         "log_every_steps", "report_every_steps", "peak_tflops", "fault_kill_at_step", "stall_timeout_s", "fault_stall_phase",
         "fault_stall_s"}
    )
    # None hashes as before the field had this default: a config that sets it keeps its old hash, and
    # one that leaves it to the data stage is named by `data`, whose directory fixes the seq_len
    hash_exclude_if_none: ClassVar[frozenset[str]] = legacy.TRAIN_HASHED_ONLY_WHEN_SET

    @model_validator(mode="after")
    def _batch_divides(self) -> TrainConfig:
        if self.resolved_batch_unit() == "rows":
            self.grad_accum_steps()
        return self

    def resolved_batch_unit(self) -> BatchUnit:
        return self.batch_unit or "rows"

    def resolved_last_step(self) -> LastStep:
        """The configured handling of an epoch's incomplete last group; by default rows keep their old
        behaviour (drop) and examples see every document every epoch (partial)."""
        if self.last_step is not None:
            return self.last_step
        return "partial" if self.resolved_batch_unit() == "examples" else "drop"

    def grad_accum_steps(self) -> int:
        """Rows unit: global = micro × grad-accum × world; anything that does not divide is a config error.
        The examples unit has no fixed accumulation (each step runs the micro-batches its documents fill)."""
        if self.resolved_batch_unit() == "examples":
            raise ConfigError("batch_unit: examples has no fixed gradient accumulation; it is sized per step")
        per_step = self.micro_batch_size * self.num_workers
        if self.global_batch_size % per_step:
            raise ConfigError(
                f"global_batch_size={self.global_batch_size} is not a multiple of micro_batch_size="
                f"{self.micro_batch_size} × num_workers={self.num_workers} = {per_step}"
            )
        return self.global_batch_size // per_step

    def worker_resources(self) -> dict[str, float]:
        """What one Ray Train worker asks of the cluster: its CPUs, a GPU when training on GPUs, extras."""
        return {"CPU": self.cpus_per_worker, **self.resources_per_worker, **({"GPU": 1.0} if self.use_gpu else {})}

    def run_resources(self) -> dict[str, float]:
        """What the whole run holds while it trains: every worker's resources (one placement group)."""
        return {k: v * self.num_workers for k, v in self.worker_resources().items() if v}

    def resolved_precision(self) -> str:
        if self.precision == "auto":
            return "bf16" if self.use_gpu else "fp32"
        return self.precision
