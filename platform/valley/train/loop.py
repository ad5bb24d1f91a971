"""The per-worker training loop that Ray Train runs on every rank (`TorchTrainer(train_loop_per_worker=…)`).

One loop for GPU and CPU: DeepSpeed (ZeRO-3 by default) over whatever process group Ray Train set up —
NCCL on GPUs, gloo on CPU, where DeepSpeed's CPU accelerator runs the same ZeRO-3 code. The loss is the sum
of per-token cross-entropies over trained (assistant) tokens divided by the number of such tokens in the
whole global batch, which every rank learns with one all-reduce before the step's first backward.

A step's micro-batches come from Ray Data (`batch_unit: rows`) or from the rank's own read of the
documents the step packs (`examples`, train/example_feed.py). Their number may change from step to step
(a smaller last step; an examples step's documents fill as many rows as they need), so the loop marks the
gradient-accumulation boundary itself, at each step's last micro-batch, rather than leaving DeepSpeed
to count a fixed number of micro-batches.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from valley.train.batches import TRAIN_COLUMNS, MicroBatch, steps, to_micro_batch
from valley.train.chunked_loss import CausalLMLoss
from valley.train.config import TrainConfig
from valley.train.epoch_prefetch import Prefetched
from valley.train.flops import doc_lengths_of, peak_flops, train_flops
from valley.train.host_memory import pin_mmap_threshold
from valley.train.packing_attention import IGNORE, model_inputs, shifted_targets
from valley.train.plan import TrainPlan
from valley.train.schedule import lr_lambda
from valley.watchdog import Heartbeat

if TYPE_CHECKING:
    from valley.storage import Storage

KILL_FLAG = "_fault_killed_once"
# What a worker reports to the stage's watchdog, in order (a stall names the phase it happened in).
PHASES = ("worker_start", "model_fetch", "process_group", "model_load", "deepspeed_init", "restore", "first_step",
          "train_step", "checkpoint", "export", "done")


@dataclass(frozen=True)
class EngineSpec:
    """What one rank builds its DeepSpeed engine from and steps with: the plan's step count and what only
    this worker knows (its local copy of the model, the attention it picked, its device's peak FLOP/s).
    Kept apart from `TrainPlan` so the doctor and the benchmarks can build an engine without a data stage."""

    model_dir: str
    attn_implementation: str
    total_steps: int
    peak_flops: float | None = None  # per device, for MFU; None: no MFU in the metrics


def epoch_dataset_name(epoch: int) -> str:
    return f"train_epoch_{epoch}"


def epoch_model_name(epoch: int) -> str:
    """Directory of the model exported after `epoch` (1-based) epochs; the last epoch's is `model/`."""
    return f"model-epoch{epoch}"


def _attn_impl(cfg: TrainConfig) -> str:
    """The configured attention for packed rows; `auto`: FA2 where its wheel is installed, else
    FlexAttention (no O(L²) mask, nothing to compile) on GPU, SDPA on CPU."""
    if cfg.attn_implementation == "flex_attention" and not cfg.use_gpu:
        raise ValueError("attn_implementation=flex_attention needs a GPU: torch has no FlexAttention backward "
                         "on CPU; use sdpa (the CPU default)")
    if cfg.attn_implementation != "auto":
        return cfg.attn_implementation
    if cfg.use_gpu:
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            return "flex_attention"
    return "sdpa"


def _setup_deepspeed(cfg: TrainConfig, spec: EngineSpec, world: int, device: torch.device,
                     hb: Heartbeat | None = None) -> tuple[Any, Any]:
    # DeepSpeed picks its accelerator at import; a CPU worker must say so before the first import.
    hb = hb or Heartbeat(None, "local")
    accelerator = "cuda" if cfg.use_gpu else "cpu"
    if not cfg.use_gpu:  # before the model load: its tensors pass through malloc too (host_memory.py)
        pin_mmap_threshold()
    os.environ.setdefault("DS_ACCELERATOR", accelerator)
    from valley.train import ops
    from valley.train.deepspeed_config import build_ds_config, uses_ds_optimizer

    ds_config = build_ds_config(cfg, world)
    # before DeepSpeed's first import: JIT builds (if any) go inside the environment, stale build locks
    # are gone, a needed op that is not prebuilt fails now, and unneeded ops are never built
    prepared = ops.prepare_worker(ds_config, accelerator)
    import deepspeed

    hb.beat("process_group", f"extensions {prepared['extensions_dir']}, off: {prepared['disabled']}")
    deepspeed.init_distributed(dist_backend="nccl" if cfg.use_gpu else "gloo")
    precision = cfg.resolved_precision()
    torch.manual_seed(cfg.seed)
    hb.beat("model_load", spec.model_dir)
    model = _load_partitioned(spec, ds_config, torch.bfloat16 if precision == "bf16" else torch.float32)
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        enable_activation_checkpointing(model)
    if cfg.zero_stage == 3 and cfg.zero3_leaf_blocks:
        blocks = mark_leaf_blocks(model)
        hb.beat("model_load", f"ZeRO-3 gathers {', '.join(blocks) or 'each module (no block classes named)'} whole")
    schedule = lr_lambda(spec.total_steps, cfg.warmup_ratio, cfg.lr_scheduler, cfg.min_lr_ratio)

    def make_scheduler(optimizer: Any) -> Any:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    model = CausalLMLoss(model, cfg.loss_chunk_tokens)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = None
    if not uses_ds_optimizer(cfg):
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=cfg.adam_betas, eps=cfg.adam_eps,
                                      weight_decay=cfg.weight_decay)
    hb.beat("deepspeed_init")
    engine, _, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, model_parameters=params,
                                                   lr_scheduler=make_scheduler, config=ds_config)
    return engine, scheduler


def _load_partitioned(spec: EngineSpec, ds_config: dict[str, Any], dtype: torch.dtype) -> Any:
    """Load the student so that, under ZeRO-3, no rank ever holds all of it: while a `HfDeepSpeedConfig` is
    alive, transformers builds the model inside `deepspeed.zero.Init` (each parameter partitioned as it is
    created) and copies the checkpoint in one gathered parameter at a time. Eight ranks of a node then
    need one model's worth of host memory between them instead of eight."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    zero3 = int(ds_config.get("zero_optimization", {}).get("stage", 0)) == 3
    marker = HfDeepSpeedConfig(ds_config) if zero3 else None  # transformers holds only a weak reference
    try:
        model = AutoModelForCausalLM.from_pretrained(spec.model_dir, dtype=dtype,
                                                     attn_implementation=spec.attn_implementation)
    finally:
        del marker  # later transformers calls (export's save_pretrained) must not think ZeRO-3 is on
    if zero3 and not all(hasattr(p, "ds_id") for p in model.parameters()):
        raise RuntimeError("ZeRO-3 is on but the model was not built inside deepspeed.zero.Init")
    return model


def mark_leaf_blocks(model: Any) -> list[str]:
    """Flag the model's decoder blocks (the classes transformers names in `_no_split_modules`) as ZeRO-3 leaf
    modules, so DeepSpeed fetches and releases each block's parameters once around the block rather than
    around each of its layers; returns the class names found."""
    from deepspeed.utils import set_z3_leaf_modules

    names = list(getattr(model, "_no_split_modules", None) or [])
    found = sorted({type(m).__name__ for m in model.modules() if type(m).__name__ in names})
    if found:
        set_z3_leaf_modules(model, found)
    return found


def enable_activation_checkpointing(model: Any) -> None:
    """Non-reentrant recomputation per decoder layer (transformers ≥5 name, older name as fallback)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _targets(mb: MicroBatch) -> torch.Tensor:
    return shifted_targets(mb.input_ids, mb.loss_mask, mb.position_ids)


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def _train_step(engine: Any, group: list[MicroBatch], cfg: TrainConfig, spec: EngineSpec, world: int,
                device: torch.device, model_config: Any) -> dict[str, float]:
    """One optimizer step over this rank's micro-batches of the step (the same number on every rank);
    returns the global metrics of the step."""
    t0 = time.perf_counter()
    targets = [_targets(mb) for mb in group]
    local_n = float(sum(int((t != IGNORE).sum()) for t in targets))
    local_tokens = float(sum(mb.n_tokens for mb in group))
    local_examples = float(sum(len(mb.trace_ids) for mb in group))
    docs = [n for mb in group for n in doc_lengths_of(mb.position_ids.numpy(), mb.row_tokens)]
    local_flops = train_flops(model_config, docs, head_tokens=int(local_n))
    n_global, n_examples = _all_sum([local_n, local_examples], device)
    dtype = torch.bfloat16 if cfg.resolved_precision() == "bf16" else torch.float32
    lr = engine.lr_scheduler.get_last_lr()[0]
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for i, (mb, tgt) in enumerate(zip(group, targets, strict=True)):
        # the step ends here, whatever DeepSpeed's configured accumulation says (see the module doc)
        engine.set_gradient_accumulation_boundary(i == len(group) - 1)
        kwargs = model_inputs(mb.input_ids.to(device), mb.position_ids.to(device), spec.attn_implementation,
                              dtype)
        s = engine(targets=tgt.to(device), **kwargs)
        # ZeRO averages gradients over ranks, so scale by world to get Σ loss / N over the global batch.
        engine.backward(s * (world / max(n_global, 1.0)), scale_wrt_gas=False)
        loss_sum += s.detach().double()
        engine.step()
    grad_norm = engine.get_global_grad_norm()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    g_loss, g_tokens, g_flops, sum_elapsed = _all_sum([float(loss_sum), local_tokens, local_flops, elapsed],
                                                      device)
    step_time = sum_elapsed / world  # mean over ranks (they wait for each other in every collective)
    metrics = {
        "loss": g_loss / max(n_global, 1.0),
        "lr": lr,
        "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
        "loss_tokens": n_global,
        "examples": n_examples,
        "tokens": g_tokens,
        "step_time_s": step_time,
        "tokens_per_s": g_tokens / step_time if step_time > 0 else 0.0,
    }
    if spec.peak_flops:
        metrics["mfu"] = g_flops / (step_time * world * spec.peak_flops)
    return metrics


def _log_line(m: dict[str, Any], total: int) -> str:
    mfu = f" mfu {m['mfu']:.1%}" if "mfu" in m else ""
    return (f"[valley.train] step {m['step']}/{total} epoch {m['epoch']:.2f} loss {m['loss']:.4f} lr {m['lr']:.3g} "
            f"grad_norm {m['grad_norm']:.3f} tokens/s {m['tokens_per_s']:,.0f}{mfu}")


def _maybe_kill(cfg: TrainConfig, step: int, rank: int, world: int, plan: TrainPlan) -> None:
    """Fault drill for resume tests and ops rehearsals: one rank dies hard, once per stage dir."""
    if cfg.fault_kill_at_step is None or step != cfg.fault_kill_at_step or rank != min(1, world - 1):
        return
    from valley.storage import Storage

    storage = Storage(plan.storage_root)
    if storage.exists(plan.out_dir, KILL_FLAG):
        return
    storage.write_text(f"killed at step {step}\n", plan.out_dir, KILL_FLAG)
    os._exit(17)


def _maybe_stall(cfg: TrainConfig, phase: str, rank: int, world: int) -> None:
    """Fault drill for the watchdog: one rank stops making progress on entering `phase`."""
    if cfg.fault_stall_phase == phase and rank == min(1, world - 1):
        print(f"[valley.train] fault stall: rank {rank} sleeps {cfg.fault_stall_s:g} s in {phase}", flush=True)
        time.sleep(cfg.fault_stall_s)


def _heartbeat(loop_config: dict[str, Any], cfg: TrainConfig, rank: int, world: int) -> Heartbeat:
    import socket

    return Heartbeat(loop_config.get("board"), f"rank {rank}@{socket.gethostname()}",
                     on_beat=lambda phase: _maybe_stall(cfg, phase, rank, world))


@dataclass(frozen=True)
class _Worker:
    """Who this rank is and what it runs on, fixed from worker start to the end of the loop."""

    cfg: TrainConfig
    plan: TrainPlan
    rank: int
    world: int
    device: torch.device
    hb: Heartbeat


@dataclass(frozen=True)
class _Setup:
    """What the setup phase built: the DeepSpeed engine and the local model files it and the exports need."""

    spec: EngineSpec
    tokenizer_dir: str
    model_config: Any  # the student's transformers config, for the FLOP count of each step
    engine: Any


def _start_worker(loop_config: dict[str, Any]) -> _Worker:
    """Worker start: the config, this rank's place in the group, its heartbeat and its device."""
    import ray.train
    import ray.train.torch

    cfg = TrainConfig.model_validate(loop_config["cfg"])
    plan: TrainPlan = loop_config["plan"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    hb = _heartbeat(loop_config, cfg, rank, world)
    hb.beat("worker_start", f"pid {os.getpid()}")
    if rank == 0 and (group := ray.util.get_current_placement_group()) is not None:
        hb.register(f"placement group {group.id.hex()}", group)  # outlives a killed run otherwise
    device = ray.train.torch.get_device() if cfg.use_gpu else torch.device("cpu")
    if cfg.use_gpu:
        torch.cuda.set_device(device)
    elif cfg.torch_threads is not None:
        torch.set_num_threads(cfg.torch_threads)
    return _Worker(cfg, plan, rank, world, device, hb)


def _build_engine(w: _Worker) -> _Setup:
    """Setup: fetch the model and tokenizer to this node, then build the DeepSpeed engine over them."""
    from transformers import AutoConfig

    from valley.storage import Storage
    from valley.train.transfer import local_dir

    cfg, plan = w.cfg, w.plan
    w.hb.beat("model_fetch", plan.model_uri)
    spec = EngineSpec(
        model_dir=local_dir(Storage(plan.model_uri), ""),
        attn_implementation=_attn_impl(cfg),
        total_steps=plan.total_steps,
        peak_flops=peak_flops(torch.cuda.get_device_name(w.device), cfg.peak_tflops) if cfg.use_gpu else None,
    )
    tokenizer_dir = local_dir(Storage(plan.tokenizer_uri), "")
    model_config = AutoConfig.from_pretrained(spec.model_dir)
    engine, _ = _setup_deepspeed(cfg, spec, w.world, w.device, w.hb)
    return _Setup(spec, tokenizer_dir, model_config, engine)


def _restore(w: _Worker, setup: _Setup) -> _Training:
    """Resume from the run's latest checkpoint (the step reached and the metrics so far), or start at 0."""
    from valley.storage import Storage
    from valley.train import checkpoint

    w.hb.beat("restore")
    state = checkpoint.restore(setup.engine, w.rank) or {"step": 0, "history": []}
    return _Training(w, setup, Storage(w.plan.storage_root), int(state["step"]), list(state["history"]))


@dataclass
class _Training:
    """The training phase of one rank: its changing state is the step reached and the metrics history,
    which checkpoints, exports and `metrics.jsonl` all take from here, and the next epoch's rows being read."""

    worker: _Worker
    setup: _Setup
    storage: Storage
    step: int
    history: list[dict[str, Any]]
    next_epoch: dict[int, Prefetched[MicroBatch]] = field(default_factory=dict)  # epochs being read ahead

    def run(self) -> None:
        """Train from the restored step to the plan's last, one epoch's data shard at a time, then export."""
        plan = self.worker.plan
        self.setup.engine.train()
        self._export_epoch_if_due()
        self.worker.hb.beat("first_step", f"reading data, then step {self.step + 1}/{plan.total_steps}")
        while self.step < plan.total_steps:
            self._run_epoch(*divmod(self.step, plan.steps_per_epoch))
        self._finish()

    def _micro_batches(self, epoch: int) -> Iterator[MicroBatch]:
        """This rank's shard of the epoch's dataset, as micro-batches in the planned order (a smaller last
        one only when the epoch's last step is kept); read ahead since the previous epoch began, if it was."""
        ahead = self.next_epoch.pop(epoch, None)
        if ahead is not None:
            return ahead.take()
        return self._read_shard(self._shard(epoch))

    def _shard(self, epoch: int) -> Any:
        import ray.train

        return ray.train.get_dataset_shard(epoch_dataset_name(epoch))  # on the loop's thread (train context)

    def _read_shard(self, shard: Any) -> Iterator[MicroBatch]:
        cfg, plan = self.worker.cfg, self.worker.plan
        it = shard.iter_batches(batch_size=cfg.micro_batch_size, batch_format="pyarrow",
                                drop_last=cfg.resolved_last_step() == "drop", prefetch_batches=2)
        return (to_micro_batch(b.select(TRAIN_COLUMNS), max_seq_len=plan.max_seq_len, pad_id=plan.pad_id)
                for b in it)

    def _read_next_epoch_ahead(self, epoch: int) -> None:
        """Start the next epoch's execution now and read its first step's micro-batches in the background
        (epoch_prefetch.py), so the next epoch does not begin with every rank waiting for Ray Data."""
        plan = self.worker.plan
        following = epoch + 1
        if plan.unit == "examples" or following * plan.steps_per_epoch >= plan.total_steps \
                or following in self.next_epoch:
            return
        shard = self._shard(following)
        self.next_epoch[following] = Prefetched(lambda: self._read_shard(shard), ahead=plan.accum or 1,
                                                name=f"epoch-{following}-prefetch")

    def _steps(self, epoch: int, in_epoch: int) -> Iterator[tuple[int, list[MicroBatch]]]:
        """(index in the epoch, this rank's micro-batches) of the epoch's steps from `in_epoch` on (the
        earlier ones were trained before a restart: same order, skipped)."""
        w = self.worker
        if w.plan.unit == "examples":
            from valley.train.example_feed import rank_steps

            self.worker.hb.beat("train_step", f"reading this rank's documents of epoch {epoch + 1}")
            yield from rank_steps(w.plan, w.cfg, epoch, in_epoch, w.rank, w.world)
            return
        assert w.plan.accum is not None
        partial = w.cfg.resolved_last_step() == "partial"
        for i, group in enumerate(steps(self._micro_batches(epoch), w.plan.accum, partial)):
            if i >= in_epoch:
                yield i, group

    def _run_epoch(self, epoch: int, in_epoch: int) -> None:
        """The steps of one epoch from `in_epoch` on; a shard that runs out early fails the run rather than
        shifting later epochs."""
        w, s = self.worker, self.setup
        steps_per_epoch, total_steps = w.plan.steps_per_epoch, w.plan.total_steps
        self._read_next_epoch_ahead(epoch)
        for i, group in self._steps(epoch, in_epoch):
            metrics = _train_step(s.engine, group, w.cfg, s.spec, w.world, w.device, s.model_config)
            self._record(metrics, epoch + (i + 1) / steps_per_epoch)
            self._checkpoint_or_report(metrics)
            if i + 1 >= steps_per_epoch or self.step >= total_steps:
                break
        step = self.step
        if step < total_steps and step % steps_per_epoch:
            raise RuntimeError(f"epoch {epoch} ended after {step % steps_per_epoch} of {steps_per_epoch} steps on "
                               f"rank {w.rank}: the dataset shard yielded fewer rows than planned")

    def _record(self, metrics: dict[str, Any], epoch: float) -> None:
        """Count the step done: a heartbeat, its place in the run added to its metrics, history, log line."""
        self.step += 1
        self.worker.hb.beat("train_step", f"step {self.step}/{self.worker.plan.total_steps} done")
        metrics.update(step=self.step, epoch=epoch, time=time.time())
        self.history.append(metrics)
        if self.worker.rank == 0 and self.step % self.worker.cfg.log_every_steps == 0:
            print(_log_line(metrics, self.worker.plan.total_steps), flush=True)

    def _checkpoint_or_report(self, metrics: dict[str, Any]) -> None:
        """A checkpoint (which reports the metrics with it) when one is due, else a plain report when due."""
        import ray.train

        cfg, step = self.worker.cfg, self.step
        epoch_end = cfg.export_every_epoch and step % self.worker.plan.steps_per_epoch == 0
        if step % cfg.checkpoint_every_steps == 0 or step == self.worker.plan.total_steps or epoch_end:
            self._checkpoint(metrics)
        elif step % cfg.report_every_steps == 0:
            ray.train.report(metrics)

    def _checkpoint(self, metrics: dict[str, Any]) -> None:
        """Save and report the checkpoint, write the history, then the fault drill and the epoch's export
        (both after the checkpoint, so a killed or restarted run resumes from it)."""
        from valley.train import checkpoint

        w = self.worker
        w.hb.beat("checkpoint", f"step {self.step}")
        checkpoint.save_and_report(self.setup.engine, {"step": self.step, "history": self.history}, metrics)
        if w.rank == 0:
            _write_history(self.storage, w.plan.out_dir, self.history)
        _maybe_kill(w.cfg, self.step, w.rank, w.world, w.plan)
        self._export_epoch_if_due()

    def _export_epoch_if_due(self) -> None:
        """At an epoch boundary short of the end, export once (also when a restart lands right here)."""
        from valley.train import export

        w = self.worker
        done, mid = divmod(self.step, w.plan.steps_per_epoch)
        if not w.cfg.export_every_epoch or mid or done == 0 or self.step >= w.plan.total_steps:
            return
        missing = w.rank == 0 and not export.is_exported(self.storage, w.plan.out_dir, epoch_model_name(done))
        if _all_sum([1.0 if missing else 0.0], w.device)[0] > 0:  # rank 0 decides for everyone
            self._export_to([epoch_model_name(done)], done)

    def _export_to(self, parts: list[str], epoch_done: int) -> None:
        """Collective: write the model as a Hugging Face directory under the stage's `parts`."""
        from valley.train import export

        w, s, cfg = self.worker, self.setup, self.worker.cfg
        export_dtype = cfg.export_dtype if cfg.export_dtype != "auto" else \
            ("bfloat16" if cfg.resolved_precision() == "bf16" else "float32")
        w.hb.beat("export", "/".join(parts))
        export.export(s.engine.module.lm, w.rank, export_dtype, s.tokenizer_dir, s.spec.model_dir,
                      w.plan.storage_root, [w.plan.out_dir, *parts],
                      extra={"config_hash": w.plan.config_hash, "steps": self.step, "epoch": epoch_done})

    def _finish(self) -> None:
        """The final model under `model/`, the full history, then a barrier so that no rank leaves early."""
        w = self.worker
        self._export_to(["model"], w.cfg.epochs)
        if w.rank == 0:
            _write_history(self.storage, w.plan.out_dir, self.history)
        dist.barrier()
        w.hb.beat("done")


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Entry point on every Ray Train worker: start, set up the engine, restore, train to the last step."""
    w = _start_worker(loop_config)
    _restore(w, _build_engine(w)).run()


def _write_history(storage: Any, out_dir: str, history: list[dict[str, Any]]) -> None:
    import json

    storage.write_text("".join(json.dumps(h, sort_keys=True) + "\n" for h in history), out_dir, "metrics.jsonl")
