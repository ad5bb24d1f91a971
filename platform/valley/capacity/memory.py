"""Per-rank device memory of one training run (pure): model states, ZeRO-3 buffers, activations, loss, mask.

Why a model of our own beside DeepSpeed's estimator: `estimate_zero3_model_states_mem_needs` covers the
model states only (parameters, gradients, optimizer states, the largest gathered layer), which at 32K tokens
is well under half of what a rank holds. The rest depends on this platform's own choices — per-layer
activation checkpointing, the chunked LM-head loss (chunked_loss.py), how packed rows are masked
(packing_attention.py), the bucket sizes of deepspeed_config.py — so it is counted here, tensor by tensor,
from the model shape. For bf16 ZeRO-3 the model-state part is DeepSpeed's own figure (`deepspeed_estimate`
checks it); benchmarks/bench_plan.py checks the whole against a real ZeRO-3 step's peak on CPU.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

from valley.train.config import TrainConfig

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
    optimizer: int  # fp32 master weights + Adam moments
    gathered_layer: int  # DeepSpeed's "largest layer" term: one whole layer's parameters and gradient
    zero_buffers: int  # reduce bucket + prefetched parameters
    activations: int  # checkpointed layer inputs + one layer recomputed with its gradients
    attention_mask: int  # the O(L²) block-diagonal mask of the SDPA/eager path, or FlexAttention's block mask
    attention_scores: int  # eager attention's score matrices (one layer at a time with checkpointing)
    loss: int  # the chunked loss's peak: one chunk's logits, their fp32 log-softmax and gradient
    optimizer_step: int  # temporaries of the optimizer step (after the backward, so never beside activations)
    host_offloaded: int  # states moved to host memory by offload_optimizer / offload_params
    deepspeed_estimate: int | None  # DeepSpeed's own model-state figure, when it applies (bf16 ZeRO-3)

    @property
    def model_states(self) -> int:
        return self.params + self.grads + self.optimizer + self.gathered_layer

    @property
    def persistent(self) -> int:
        """Held for the whole run: sharded parameters, gradients, optimizer states, ZeRO's buffers (with
        DeepSpeed's own figure for the states where it applies, less its gathered-layer term)."""
        states = (self.deepspeed_estimate - self.gathered_layer if self.deepspeed_estimate is not None
                  else self.params + self.grads + self.optimizer)
        return states + self.zero_buffers

    @property
    def forward_backward(self) -> int:
        """What lives only during forward and backward, on top of the persistent part."""
        return self.gathered_layer + self.activations + self.attention_mask + self.attention_scores + self.loss

    @property
    def total(self) -> int:
        """Peak: the persistent part plus the larger of the two transient phases (forward/backward, then
        the optimizer step)."""
        return self.persistent + max(self.forward_backward, self.optimizer_step)

    def as_dict(self) -> dict[str, int | None]:
        return {**asdict(self), "model_states": self.model_states, "persistent": self.persistent,
                "forward_backward": self.forward_backward, "total": self.total}


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
    (host pages are lazy): the reduce bucket then holds at most the model's gradients."""
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
    optimizer = per_rank(12, parts["optimizer"])  # fp32 master copy + Adam's two moments
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
    prefetch = int(zero.get("stage3_prefetch_bucket_size", 5e8)) if stage == 3 else 0
    if device == "cpu":
        bucket, prefetch = min(bucket, total), min(prefetch, total)
    zero_buffers = bucket * p_bytes + prefetch * p_bytes
    if cfg.offload_params and stage == 3:
        zero_buffers = bucket * p_bytes  # prefetched parameters stream from the host one layer at a time
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
    return RankMemory(
        params=params, grads=grads, optimizer=optimizer, gathered_layer=gathered, zero_buffers=zero_buffers,
        activations=activation_bytes(shape, tokens, p_bytes, cfg.gradient_checkpointing),
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
