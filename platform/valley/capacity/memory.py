"""Per-rank device memory of one training run (pure): model states, ZeRO-3 buffers, activations, loss, mask.

Why a model of our own beside DeepSpeed's estimator: `estimate_zero3_model_states_mem_needs` covers the
model states only (parameters, gradients, optimizer states, the largest gathered layer), which at 32K tokens
is well under half of what a rank holds. The rest depends on this platform's own choices — per-layer
activation checkpointing, the chunked LM-head loss (chunked_loss.py), how packed rows are masked
(packing_attention.py), the bucket sizes of deepspeed_config.py — so it is counted here, tensor by tensor,
from the model shape. For bf16 ZeRO-3 the model-state part is DeepSpeed's own figure (`deepspeed_estimate`
checks it); benchmarks/bench_plan.py checks the whole against a real ZeRO-3 step's peak on CPU. Two things
DeepSpeed's figure leaves out are counted too: the full parameters ZeRO-3 keeps gathered between uses (a
replay of its fetch trace, `gathered_peak`) and, on CPU only, the glibc heap pages that freed tensors leave
resident (`heap_slack_bytes`, `activation_heap_slack`).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

from valley.train.config import TrainConfig
from valley.train.host_memory import MMAP_THRESHOLD

GIB = 1024 ** 3


def _get(config: Any, name: str, default: Any = None) -> Any:
    return config.get(name, default) if isinstance(config, dict) else getattr(config, name, default)


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on in a decoder-only transformer's config."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool = False

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        heads = _get(config, "num_attention_heads")
        hidden = _get(config, "hidden_size")
        return cls(hidden=hidden, intermediate=_get(config, "intermediate_size"),
                   layers=_get(config, "num_hidden_layers"), heads=heads,
                   kv_heads=_get(config, "num_key_value_heads") or heads,
                   head_dim=_get(config, "head_dim") or hidden // heads, vocab=_get(config, "vocab_size"),
                   tied=bool(_get(config, "tie_word_embeddings", False)),
                   qkv_bias=bool(_get(config, "attention_bias", False)) or _get(config, "model_type") == "qwen2")

    def as_config(self) -> dict[str, Any]:
        """The transformers-style fields train/flops.py reads."""
        return {"hidden_size": self.hidden, "intermediate_size": self.intermediate,
                "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
                "num_key_value_heads": self.kv_heads, "head_dim": self.head_dim, "vocab_size": self.vocab}

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def layer_params(self) -> int:
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        attn = h * q + 2 * h * kv + q * h + ((q + 2 * kv) if self.qkv_bias else 0)
        return attn + 3 * h * self.intermediate + 2 * h

    @property
    def total_params(self) -> int:
        head = 0 if self.tied else self.embedding_params
        return self.embedding_params + self.layers * self.layer_params + self.hidden + head

    def layer_tensors(self) -> list[int]:
        """Element counts of one decoder layer's parameter tensors: what ZeRO-3's persistence threshold
        compares against, one tensor at a time."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return [h * q, h * kv, h * kv, q * h, h * i, h * i, i * h, h, h] + ([q, kv, kv] if self.qkv_bias else [])

    def persistent_params(self, threshold: int) -> int:
        """Elements in tensors of at most `threshold` elements, which ZeRO-3 keeps whole on every rank
        (`stage3_param_persistence_threshold`; partition_parameters.py marks them `ds_persist`)."""
        own = sum(n for n in self.layer_tensors() if n <= threshold) * self.layers
        heads = 1 if self.tied else 2
        return own + (self.hidden if self.hidden <= threshold else 0) + (
            heads * self.embedding_params if self.embedding_params <= threshold else 0)

    @property
    def largest_layer_params(self) -> int:
        """Largest single module's own parameters, as DeepSpeed's `model_to_params` counts: the embedding
        (or an MLP projection in a model with a small vocabulary)."""
        return max(self.embedding_params, self.hidden * self.intermediate)


@dataclass
class RankMemory:
    """Bytes one rank's device holds at its peak, by what holds them."""

    params: int
    grads: int
    optimizer: int  # Adam moments + fp32 master weights (when they are not the parameters themselves)
    gathered_layer: int  # DeepSpeed's "largest layer" term: one whole layer's parameters and gradient
    zero_buffers: int  # the reduce bucket
    retained_params: int  # full parameters gathered beside the layer in use: reused, prefetched, persistent
    activations: int  # checkpointed layer inputs + one layer recomputed with its gradients
    attention_mask: int  # the O(L²) block-diagonal mask of the SDPA/eager path, or FlexAttention's block mask
    attention_scores: int  # eager attention's score matrices (one layer at a time with checkpointing)
    loss: int  # the chunked loss's peak: one chunk's logits, their fp32 log-softmax and gradient
    optimizer_step: int  # temporaries of the optimizer step (after the backward, so never beside activations)
    host_offloaded: int  # states moved to host memory by offload_optimizer / offload_params
    heap_slack: int  # CPU only: glibc heap pages the checkpoint load left resident (see `heap_slack_bytes`)
    activation_heap_slack: int  # CPU only: the backward's freed activations, still resident during the step
    deepspeed_estimate: int | None  # DeepSpeed's own model-state figure, when it applies (bf16 ZeRO-3)

    @property
    def model_states(self) -> int:
        return self.params + self.grads + self.optimizer + self.gathered_layer

    @property
    def persistent(self) -> int:
        """Held for the whole run: sharded parameters, gradients, optimizer states, ZeRO's buffers (with
        DeepSpeed's own figure for the states where it applies, less its gathered-layer term), and on CPU
        the heap the model load left behind."""
        states = (self.deepspeed_estimate - self.gathered_layer if self.deepspeed_estimate is not None
                  else self.params + self.grads + self.optimizer)
        return states + self.zero_buffers + self.heap_slack

    @property
    def forward_backward(self) -> int:
        """What lives only during forward and backward, on top of the persistent part."""
        return (self.gathered_layer + self.retained_params + self.activations + self.attention_mask
                + self.attention_scores + self.loss)

    @property
    def total(self) -> int:
        """Peak: the persistent part plus the larger of the two transient phases (forward/backward, then
        the optimizer step)."""
        return self.persistent + max(self.forward_backward, self.optimizer_phase)

    @property
    def optimizer_phase(self) -> int:
        """What the optimizer step adds to the persistent part: its temporaries, and on CPU the heap pages
        the forward/backward's activations left (glibc does not hand them back before the step)."""
        return self.optimizer_step + self.activation_heap_slack

    def as_dict(self) -> dict[str, int | None]:
        return {**asdict(self), "model_states": self.model_states, "persistent": self.persistent,
                "forward_backward": self.forward_backward, "optimizer_phase": self.optimizer_phase,
                "total": self.total}


def _bytes(dtype: str) -> int:
    return 2 if dtype in ("bf16", "fp16", "bfloat16", "float16") else 4


def _zero_settings(cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    from valley.train.deepspeed_config import build_ds_config

    sized = cfg.model_copy(update={"num_workers": world_size,
                                   "global_batch_size": cfg.micro_batch_size * world_size})
    ds = build_ds_config(sized, world_size)
    zero = dict(ds.get("zero_optimization", {}))
    zero["grad_accum_dtype"] = ds.get("data_types", {}).get("grad_accum_dtype")
    return zero


def deepspeed_estimate(shape: ModelShape, world_size: int, gpus_per_node: int, offload_optimizer: bool,
                       offload_params: bool) -> int:
    """DeepSpeed's own per-GPU model-state estimate for ZeRO-3 (parameters, gradients, optimizer states,
    the largest layer), from `deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs`."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # importing DeepSpeed on a host without CUDA
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    per_node = min(gpus_per_node, world_size)
    _, gpu_mem, _ = estimate_zero3_model_states_mem_needs(
        shape.total_params, shape.largest_layer_params, num_gpus_per_node=per_node,
        num_nodes=math.ceil(world_size / per_node), cpu_offload=offload_optimizer,
        cpu_offload_params=offload_params, zero_init=True)
    return int(gpu_mem)


@dataclass(frozen=True)
class Fetch:
    """One ZeRO-3 fetch of a module's parameters: its name, all its elements (what the reuse distance
    counts) and those that are gathered for it (the non-persistent ones)."""

    module: str
    numel: int
    gathered: int


def fetch_trace(shape: ModelShape, n_chunks: int, checkpointing: bool, persistence_threshold: int) -> list[Fetch]:
    """The order in which ZeRO-3 fetches parameters in one forward+backward (a decoder layer as one module):
    the embedding, the layers, the norm, the LM head once per loss chunk; then the backward: each chunk's
    head recomputed (chunked_loss.py checkpoints it) and differentiated, the norm, each layer recomputed
    (with checkpointing) and differentiated, the embedding. A tied head is the embedding's weight."""
    big = [n for n in shape.layer_tensors() if n > persistence_threshold]
    vocab = shape.embedding_params if shape.embedding_params > persistence_threshold else 0
    emb = Fetch("embed", shape.embedding_params, vocab)
    head = emb if shape.tied else Fetch("head", shape.embedding_params, vocab)
    norm = Fetch("norm", shape.hidden, shape.hidden if shape.hidden > persistence_threshold else 0)
    layers = [Fetch(f"layer{k}", shape.layer_params, sum(big)) for k in range(shape.layers)]
    backward = [x for layer in reversed(layers) for x in ([layer, layer] if checkpointing else [layer])]
    return [emb, *layers, norm, *[head] * n_chunks, *[head, head] * n_chunks, norm, *backward, emb]


def _kept_until_next_use(trace: list[Fetch], reuse_distance: int) -> list[bool]:
    """Whether the parameters fetched at each point stay gathered until their next use: ZeRO-3 releases
    a module's parameters after use unless they recur within `stage3_max_reuse_distance` elements
    (partitioned_param_coordinator.py, `__params_to_release`)."""
    kept = [False] * len(trace)
    for i, fetch in enumerate(trace):
        between = 0
        for later in trace[i + 1:]:
            if later.module == fetch.module:
                kept[i] = True
                break
            between += later.numel
            if between >= reuse_distance:
                break
    return kept


def gathered_peak(trace: list[Fetch], reuse_distance: int, prefetch: int, max_live: int) -> int:
    """Most elements gathered at once in steady state: the module in use, modules kept for reuse or held
    by the prefetcher, and those prefetched ahead of use."""
    kept = _kept_until_next_use(trace, reuse_distance)
    live: dict[str, int] = {}
    hold_until: dict[str, int] = {}
    cursor, peak = 0, 0
    for i, fetch in enumerate(trace):
        live[fetch.module] = fetch.gathered
        budget = min(prefetch, max(0, max_live - sum(live.values())))
        cursor = _prefetch(trace, max(cursor, i + 1), budget, live, hold_until)
        peak = max(peak, sum(live.values()))
        if not kept[i] and hold_until.get(fetch.module, -1) <= i:
            live.pop(fetch.module)
    return peak


def _prefetch(trace: list[Fetch], start: int, budget: int, live: dict[str, int], hold_until: dict[str, int]) -> int:
    """ZeRO-3's prefetcher walks the trace once per step from where it stopped, gathering modules not yet
    gathered until `budget` elements are in flight; a gathered module it walks past stays gathered until
    that use (partitioned_param_coordinator.py, `__most_recent_step_id_param_fetched_for`). Returns where
    the walk stopped."""
    fetched, j = 0, start
    while budget > 0 and fetched < budget and j < len(trace):
        ahead = trace[j]
        if ahead.module in live:
            hold_until[ahead.module] = max(hold_until.get(ahead.module, -1), j)
        else:
            live[ahead.module] = ahead.gathered
            fetched += ahead.gathered
        j += 1
    return j


def retained_params_bytes(shape: ModelShape, cfg: TrainConfig, zero: dict[str, Any], p_bytes: int,
                          tokens: int) -> int:
    """Full parameters ZeRO-3 holds beside the largest module (which `gathered_layer` counts): modules kept
    for reuse or prefetched at the busiest point of the trace, and the persistent small tensors."""
    threshold = int(zero.get("stage3_param_persistence_threshold", 1e5))
    n_chunks = max(1, math.ceil(tokens / cfg.loss_chunk_tokens))
    trace = fetch_trace(shape, n_chunks, cfg.gradient_checkpointing, threshold)
    peak = gathered_peak(trace, int(zero.get("stage3_max_reuse_distance", 1e9)),
                         int(zero.get("stage3_prefetch_bucket_size", 5e7)), int(zero.get("stage3_max_live_parameters", 1e9)))
    return (max(0, peak - shape.largest_layer_params) + shape.persistent_params(threshold)) * p_bytes


# glibc's malloc serves an allocation from the heap below its mmap threshold; heap pages stay resident after
# free, mmapped ones do not. CPU training processes fix the threshold at MMAP_THRESHOLD (train/host_memory.py);
# left to itself it rises with use up to 32 MiB on 64-bit


def heap_slack_bytes(shape: ModelShape, p_bytes: int) -> int:
    """Host memory the checkpoint load leaves resident in glibc's heap (CPU only): each parameter tensor
    under the mmap ceiling passes through the heap whole twice — built whole inside `zero.Init` before it
    is partitioned, then gathered whole again for the checkpoint to be copied in — and the freed pages are
    kept for the rest of the run. On GPU those tensors live in PyTorch's caching allocator, which hands
    freed blocks to later allocations (and empties its cache before failing one), so no term."""
    tensors = shape.layer_tensors() * shape.layers + [shape.hidden] + [shape.embedding_params] * (
        1 if shape.tied else 2)
    return 2 * sum(n * p_bytes for n in tensors if n * p_bytes < MMAP_THRESHOLD)


def activation_bytes(shape: ModelShape, tokens: int, act_bytes: int, checkpointing: bool) -> int:
    """Checkpointed inputs of every layer plus one layer's forward tensors and their gradients.

    Tensors one decoder layer keeps for its backward, per token (elements): the two RMSNorm inputs and
    outputs (4h, plus an fp32 copy of each input, 2h more in bf16), q/k/v and their rotated copies, the
    attention output, the o_proj and down_proj outputs (2h), and the gated MLP's gate, up, SiLU(gate) and
    product (4·intermediate). The backward holds gradients of about the same size while it runs."""
    h, kvd = shape.hidden, shape.kv_heads * shape.head_dim
    qd = shape.heads * shape.head_dim
    fp32_copies = 2 * h * 4 // act_bytes if act_bytes < 4 else 0
    per_token = 6 * h + fp32_copies + 3 * qd + 4 * kvd + 4 * shape.intermediate
    one_layer = tokens * per_token * act_bytes
    if checkpointing:
        stored = shape.layers * tokens * h * act_bytes
        return stored + 2 * one_layer + 2 * tokens * h * act_bytes  # + final norm output and its gradient
    return shape.layers * one_layer + one_layer + 2 * tokens * h * act_bytes


def mask_bytes(attn: str, micro_batch: int, seq_len: int, act_bytes: int) -> int:
    """SDPA/eager: the additive (B, 1, L, L) mask in the training dtype, plus the boolean (B, L, L) it is
    built from. FlexAttention: a block mask of (L/128)² block indices (a few tensors of int32).
    FlashAttention-2 varlen: cumulative sequence lengths only."""
    if attn in ("sdpa", "eager"):
        return micro_batch * seq_len * seq_len * (act_bytes + 1)
    if attn == "flex_attention":
        blocks = math.ceil(seq_len / 128)
        return micro_batch * 4 * blocks * blocks * 4 + 8 * micro_batch * seq_len
    return 8 * micro_batch * seq_len


def scores_bytes(shape: ModelShape, attn: str, micro_batch: int, seq_len: int, act_bytes: int) -> int:
    """Eager attention materialises the (B, heads, L, L) scores, their fp32 softmax and its gradient."""
    if attn != "eager":
        return 0
    return micro_batch * shape.heads * seq_len * seq_len * (act_bytes + 4 + 4)


def loss_bytes(shape: ModelShape, tokens: int, chunk_tokens: int, trained_fraction: float) -> int:
    """One checkpointed chunk of the LM head + cross-entropy: its logits, their fp32 upcast (the same tensor
    in fp32 training), the log-softmax kept for backward and the logits' gradient — about 12 bytes per
    logit either way — plus the trained positions' hidden states picked out and their gradient."""
    n_chunks = max(1, math.ceil(tokens / chunk_tokens))
    per_chunk = math.ceil(tokens * trained_fraction / n_chunks)
    return per_chunk * shape.vocab * 12 + 2 * int(tokens * trained_fraction) * shape.hidden * 4



def packed_length(cfg: TrainConfig) -> int:
    """The packed row length a run trains on: its own `max_seq_len`, else the data stage's default (a run
    without one takes the length its data was packed to)."""
    from valley.data.config import DataConfig

    return cfg.max_seq_len or DataConfig.model_fields["max_seq_len"].default

def rank_memory(shape: ModelShape, cfg: TrainConfig, world_size: int | None = None, device: str = "gpu",
                gpus_per_node: int = 8, trained_fraction: float = 1.0, attn: str | None = None) -> RankMemory:
    """Peak bytes on one rank's device for a run of `cfg` over `world_size` ranks.

    `device="cpu"` models DeepSpeed's CPU accelerator, where a buffer counts only once it is touched
    (host pages are lazy): the reduce bucket then holds at most the model's gradients; and where glibc's
    heap keeps freed pages, from the checkpoint load (`heap_slack`) and the backward's activations
    (`activation_heap_slack`, during the step). Both are 0 on GPU."""
    world = world_size or cfg.num_workers
    precision = cfg.resolved_precision() if device == "cpu" else (
        "bf16" if cfg.precision == "auto" else cfg.precision)
    p_bytes = _bytes(precision)
    zero = _zero_settings(cfg, world)
    g_bytes = 4 if zero.get("grad_accum_dtype") == "fp32" else p_bytes
    stage = cfg.zero_stage
    total = shape.total_params
    parts = {  # which states are split over ranks at each ZeRO stage
        "params": stage >= 3, "grads": stage >= 2, "optimizer": stage >= 1}

    def per_rank(n_bytes: int, split: bool) -> int:
        return math.ceil(total * n_bytes / (world if split else 1))

    params = per_rank(p_bytes, parts["params"])
    grads = per_rank(g_bytes, parts["grads"])
    # fp32 master copy + Adam's two moments. Also in fp32 training: stage3.py's `_create_fp32_partitions`
    # would reuse the parameter partition only where `tensor.device == self.device`, a torch.device against
    # the accelerator's device *name* (a str: "cpu", "cuda:0"), which torch compares unequal, so it copies
    optimizer = per_rank(12, parts["optimizer"])
    offloaded = 0
    if cfg.offload_optimizer:
        offloaded += grads + optimizer
        grads, optimizer = 0, 0
    if cfg.offload_params and stage == 3:
        offloaded += params
        params = 0
    # DeepSpeed's "largest layer" term, 4 bytes per parameter: the layer gathered in 16-bit with its 16-bit
    # gradient; in fp32 training both are 4 bytes
    gathered = 2 * p_bytes * shape.largest_layer_params if stage == 3 else 0
    bucket = int(zero.get("reduce_bucket_size", 5e8)) if stage >= 2 else 0
    if device == "cpu":
        bucket = min(bucket, total)
    zero_buffers = bucket * p_bytes  # prefetched parameters are gathered parameters: `retained_params`
    # ZeRO-3's step flattens the rank's gradient partition into one fp32 tensor for the optimizer (4 bytes per
    # parameter of the partition), and torch's AdamW (the loop's optimizer unless offloading) allocates
    # sqrt(v): one more partition-sized tensor with CUDA's foreach kernels, two on CPU's per-tensor path
    partition = math.ceil(total / (world if parts["optimizer"] else 1))
    step = 0 if cfg.offload_optimizer else partition * 4 * (1 + (2 if device == "cpu" else 1))
    seq_len = packed_length(cfg)
    tokens = cfg.micro_batch_size * seq_len
    impl = attn or resolve_attn(cfg, device)
    ds = None
    if stage == 3 and p_bytes == 2 and device != "cpu":
        ds = deepspeed_estimate(shape, world, gpus_per_node, cfg.offload_optimizer, cfg.offload_params)
    retained = retained_params_bytes(shape, cfg, zero, p_bytes, tokens) if stage == 3 else 0
    activations = activation_bytes(shape, tokens, p_bytes, cfg.gradient_checkpointing)
    return RankMemory(
        params=params, grads=grads, optimizer=optimizer, gathered_layer=gathered, zero_buffers=zero_buffers,
        retained_params=retained, heap_slack=heap_slack_bytes(shape, p_bytes) if device == "cpu" else 0,
        activations=activations, activation_heap_slack=activations if device == "cpu" else 0,
        attention_mask=mask_bytes(impl, cfg.micro_batch_size, seq_len, p_bytes),
        attention_scores=scores_bytes(shape, impl, cfg.micro_batch_size, seq_len, p_bytes),
        loss=loss_bytes(shape, tokens, cfg.loss_chunk_tokens, trained_fraction), optimizer_step=step,
        host_offloaded=offloaded, deepspeed_estimate=ds)


def resolve_attn(cfg: TrainConfig, device: str) -> str:
    """The attention path a run will take (train/loop.py's rule; on GPU `auto` assumes FlashAttention-2
    where its wheel is installed, as the GPU constraints install it)."""
    if cfg.attn_implementation != "auto":
        return cfg.attn_implementation
    return "flash_attention_2" if device != "cpu" else "sdpa"
