"""Attention and loss for packed rows: several documents in one row must never see each other.

A packed row carries per-document position ids (0, 1, … restarting at every document; padding is one
more document). FlashAttention-2 in transformers finds the document boundaries from the position ids
itself (its varlen path, for a single row), so it only needs `position_ids`. SDPA and eager attention need a mask: we build
a block-diagonal causal 4D mask from the position ids, which is exact but O(L²) memory — fine for the CPU
path and short GPU runs, while long-context GPU runs use FlashAttention-2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def document_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) position ids -> (B, L) document index per token: a new document wherever the position is 0
    or does not continue the previous one (the same rule transformers uses for FlashAttention varlen)."""
    prev = torch.cat([position_ids[:, :1] - 1, position_ids[:, :-1]], dim=1)
    starts = (position_ids != prev + 1) | (position_ids == 0)
    return starts.long().cumsum(dim=1)


def block_causal_mask(position_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive (B, 1, L, L) mask: 0 where query i may attend key j (same document, j ≤ i), else -inf-ish."""
    doc = document_ids(position_ids)
    length = position_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=position_ids.device).tril()
    allowed = (doc[:, :, None] == doc[:, None, :]) & causal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=position_ids.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None, :, :]


def model_inputs(input_ids: torch.Tensor, position_ids: torch.Tensor, attn_implementation: str,
                 dtype: torch.dtype) -> dict[str, torch.Tensor | bool]:
    """Keyword arguments for a transformers causal LM forward over packed rows.

    FlashAttention-2 finds documents from position ids only for a batch of one row, so a micro-batch is
    flattened into one (1, B·L) row — every row starts a document, so no boundary is lost — and the logits
    come back in the same flat order that the loss functions use.
    """
    kwargs: dict[str, torch.Tensor | bool] = {"use_cache": False}
    if attn_implementation == "flash_attention_2":
        kwargs.update(input_ids=input_ids.reshape(1, -1), position_ids=position_ids.reshape(1, -1))
    else:
        kwargs.update(input_ids=input_ids, position_ids=position_ids,
                      attention_mask=block_causal_mask(position_ids, dtype))
    return kwargs


def shifted_targets(input_ids: torch.Tensor, loss_mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Target of position t is token t+1 when that token is trained on and in the same document."""
    targets = torch.full_like(input_ids, IGNORE)
    same_doc = document_ids(position_ids)
    keep = (loss_mask[:, 1:] > 0) & (same_doc[:, 1:] == same_doc[:, :-1])
    targets[:, :-1] = torch.where(keep, input_ids[:, 1:], torch.full_like(input_ids[:, 1:], IGNORE))
    return targets


def token_loss_sum(logits: torch.Tensor, targets: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Sum (not mean) of next-token cross-entropy over trained targets from full logits, in fp32.

    The plain way, kept as the reference the training loss is tested against and as the benchmarks'
    naive baseline; training itself uses `chunked_loss.CausalLMLoss`, which never builds full logits."""
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_targets = targets.reshape(-1)
    total = flat_logits.new_zeros((), dtype=torch.float32)
    for start in range(0, flat_targets.shape[0], chunk):
        t = flat_targets[start:start + chunk]
        if (t != IGNORE).any():
            total = total + F.cross_entropy(flat_logits[start:start + chunk].float(), t,
                                            ignore_index=IGNORE, reduction="sum")
    return total
