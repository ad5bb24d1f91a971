"""Attention and loss for packed rows: several documents in one row must never see each other.

A packed row carries per-document position ids (0, 1, … restarting at every document; padding is one
more document). Three ways to keep documents apart, chosen by `attn_implementation`:
- `flex_attention` (torch's FlexAttention, no extension to build): a document `BlockMask` built from
  block-level document ranges (`document_block_mask`), O((L/128)²) memory; fully masked blocks are
  skipped, so packing also saves the cross-document FLOPs.
- `flash_attention_2`: transformers finds the boundaries from the position ids itself (its varlen path,
  for a single row), so it only needs `position_ids`; needs the flash-attn wheel.
- `sdpa` / `eager`: a block-diagonal causal 4D mask from the position ids, exact but O(L²) memory — the
  CPU default and fine for short rows.
"""

from __future__ import annotations

from typing import Any

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


FLEX_BLOCK = 128  # FlexAttention's default sparse block size


def document_block_mask(position_ids: torch.Tensor, block_size: int = FLEX_BLOCK) -> Any:
    """FlexAttention `BlockMask` for packed rows: causal inside each document, nothing across documents.

    Built from block-level document ranges, never from an (L, L) matrix: document ids only grow along a
    row, so a (query block, key block) pair can hold allowed pairs only when the key block is not after
    the query block and its last document reaches the query block's first; it is *full* (no per-element
    check needed) when both blocks lie inside one document and the key block is strictly earlier. The
    mask is O((L/block)²) small integers (a few MB at 32K tokens) plus the per-token document ids that
    `mask_mod` reads for the partial blocks on the diagonal and at document edges."""
    from torch.nn.attention.flex_attention import BlockMask

    doc = document_ids(position_ids).to(torch.int32)
    batch, length = doc.shape
    n_blocks = -(-length // block_size)
    pad = n_blocks * block_size - length
    padded = torch.cat([doc, doc[:, -1:].expand(batch, pad)], dim=1) if pad else doc
    blocks = padded.view(batch, n_blocks, block_size)
    first, last = blocks[..., 0], blocks[..., -1]  # (B, nb): smallest and largest document id in a block
    q_idx = torch.arange(n_blocks, device=doc.device)
    earlier_or_same = q_idx[None, :] <= q_idx[:, None]  # [i, j]: key block j not after query block i
    touches = last[:, None, :] >= first[:, :, None]  # key block's last doc reaches the query block's first
    allowed = earlier_or_same[None] & touches
    full = (q_idx[None, :] < q_idx[:, None])[None] & (first[:, None, :] == last[:, :, None])
    if pad:  # the tail block holds positions past the row: always check it element by element
        full[:, -1, :] = False
        full[:, :, -1] = False
    partial = allowed & ~full

    def as_kv(sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        counts = sel.sum(-1, dtype=torch.int32)[:, None]
        order = torch.argsort(sel.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
        return counts, order[:, None]

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return (padded[b, q] == padded[b, kv]) & (q >= kv)

    kv_num, kv_idx = as_kv(partial)
    full_num, full_idx = as_kv(full)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block_size, mask_mod=mask_mod,
                                    seq_lengths=(length, length))


def model_inputs(input_ids: torch.Tensor, position_ids: torch.Tensor, attn_implementation: str,
                 dtype: torch.dtype) -> dict[str, Any]:
    """Keyword arguments for a transformers causal LM forward over packed rows.

    FlashAttention-2 finds documents from position ids only for a batch of one row, so a micro-batch is
    flattened into one (1, B·L) row — every row starts a document, so no boundary is lost — and the logits
    come back in the same flat order that the loss functions use.
    """
    kwargs: dict[str, Any] = {"use_cache": False}
    if attn_implementation == "flash_attention_2":
        kwargs.update(input_ids=input_ids.reshape(1, -1), position_ids=position_ids.reshape(1, -1))
    elif attn_implementation == "flex_attention":
        kwargs.update(input_ids=input_ids, position_ids=position_ids,
                      attention_mask=document_block_mask(position_ids))
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
