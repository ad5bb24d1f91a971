"""Model FLOPs of a training step from the model config (pure), for MFU.

Counts the matmuls of a decoder-only transformer (attention projections with grouped KV heads, gated MLP,
LM head) at 2 FLOPs per multiply-add, ×3 for forward + backward. Attention scores (QKᵀ and AV) are counted
per document, causally: a document of n tokens costs Σᵢ i ≈ n(n+1)/2 query-key pairs per layer — packing
many short documents is cheaper than one row-long document, and MFU must not credit the difference.
Activation recomputation is not counted (MFU, not hardware FLOPs utilisation); the LM head counts only
over the positions it runs on (trained targets, see chunked_loss.py), so skipped prompts earn nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

# Dense bf16 peak per device (no sparsity), TFLOP/s.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}


def _get(config: Any, name: str, default: Any = None) -> Any:
    return config.get(name, default) if isinstance(config, dict) else getattr(config, name, default)


def head_flops_per_token(config: Any) -> float:
    """Forward FLOPs per token of the LM head alone."""
    return 2.0 * _get(config, "hidden_size") * _get(config, "vocab_size")


def matmul_flops_per_token(config: Any) -> float:
    """Forward FLOPs per token of every weight matmul (embedding lookup excluded, LM head included)."""
    h = _get(config, "hidden_size")
    heads = _get(config, "num_attention_heads")
    kv = _get(config, "num_key_value_heads") or heads
    head_dim = _get(config, "head_dim") or h // heads
    inter = _get(config, "intermediate_size")
    layers = _get(config, "num_hidden_layers")
    attn_proj = h * heads * head_dim + 2 * h * kv * head_dim + heads * head_dim * h
    mlp = 3 * h * inter  # gate, up, down
    return 2.0 * layers * (attn_proj + mlp) + head_flops_per_token(config)


def attention_flops(config: Any, doc_lengths: Iterable[int]) -> float:
    """Forward FLOPs of the attention scores and weighted sum over documents (causal)."""
    heads = _get(config, "num_attention_heads")
    head_dim = _get(config, "head_dim") or _get(config, "hidden_size") // heads
    layers = _get(config, "num_hidden_layers")
    pairs = sum(n * (n + 1) / 2 for n in doc_lengths)
    return 2.0 * 2.0 * layers * heads * head_dim * pairs  # QKᵀ and AV, 2 FLOPs per multiply-add


def train_flops(config: Any, doc_lengths: list[int], head_tokens: int | None = None) -> float:
    """Forward + backward FLOPs of training on these documents. `head_tokens`: positions the LM head
    actually runs on (the chunked loss projects trained targets only); default every token."""
    tokens = sum(doc_lengths)
    head = head_flops_per_token(config)
    body = (matmul_flops_per_token(config) - head) * tokens
    return 3.0 * (body + head * (tokens if head_tokens is None else head_tokens)
                  + attention_flops(config, doc_lengths))


def peak_flops(device_name: str, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of one device, from the override or the device's name; None when unknown (CPU)."""
    if override_tflops:
        return override_tflops * 1e12
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key.lower() in device_name.lower():
            return tflops * 1e12
    return None


def doc_lengths_of(position_ids: Any, n_real: Iterable[int]) -> list[int]:
    """Document lengths in rows (B, L) from their position ids, ignoring padding past n_real tokens."""
    out: list[int] = []
    rows = np.asarray(position_ids)
    for pos, real in zip(rows, n_real, strict=True):
        p = pos[: int(real)]
        starts = np.flatnonzero(p == 0)
        if len(p) and (not len(starts) or starts[0] != 0):
            starts = np.concatenate([[0], starts])
        out.extend(np.diff(np.append(starts, len(p))).tolist())
    return out
