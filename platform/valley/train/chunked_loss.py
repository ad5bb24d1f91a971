"""Next-token loss without ever holding the full-vocabulary logits of a long row.

At 32,768 tokens and Qwen2.5's 152,064-entry vocabulary one row's logits are 10 GB in bf16, and the fp32
log-softmax that cross-entropy keeps for its backward is another 20 GB: more than the rest of a 7B
student's ZeRO-3 working set. Instead the decoder's last hidden states are kept, only the positions with a
trained target are projected, and they are projected a chunk at a time inside a non-reentrant
checkpoint, so at most one chunk's logits exist at once (recomputed in the backward pass). The LM head
costs one extra forward matmul over trained tokens only, while prompts and padding skip it entirely.

`CausalLMLoss` wraps the transformers model so DeepSpeed's engine sees one module whose forward returns
the summed loss: ZeRO-3 gathers the (possibly tied) LM-head weight through its usual module hooks on
every chunk, also while recomputing. The number of chunks depends only on the micro-batch shape, never on
how many targets it holds, so ZeRO-3's prefetch trace stays the same from step to step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from valley.train.packing_attention import IGNORE

# config fields of models whose logits are not just the head's output (Gemma 2, Cohere, Granite)
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def _chunk_loss_sum(hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def chunked_loss_sum(hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module,
                     n_chunks: int) -> torch.Tensor:
    """Σ cross-entropy over positions whose target is not IGNORE, in `n_chunks` checkpointed pieces.

    `hidden` is (…, L, H) and `targets` (…, L) in the same token order (flattened together)."""
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_targets = targets.reshape(-1)
    keep = (flat_targets != IGNORE).nonzero().squeeze(1)
    picked_hidden = flat_hidden.index_select(0, keep)
    picked_targets = flat_targets.index_select(0, keep)
    total = hidden.new_zeros((), dtype=torch.float32)
    for h, t in zip(picked_hidden.tensor_split(n_chunks), picked_targets.tensor_split(n_chunks), strict=True):
        # every chunk calls the head, even an empty one, so the module call order is fixed per shape
        total = total + checkpoint(_chunk_loss_sum, h, t, head, use_reentrant=False)
    return total


def chunks_for(n_positions: int, chunk_tokens: int) -> int:
    """How many pieces keep each piece at most `chunk_tokens` positions long (at least one)."""
    return max(1, math.ceil(n_positions / chunk_tokens))


class CausalLMLoss(torch.nn.Module):
    """A transformers causal LM whose forward returns Σ token loss over `targets` (see the module doc).

    The wrapped model stays reachable as `.lm` for export; its state-dict keys gain the `lm.` prefix only
    inside DeepSpeed's own checkpoints."""

    def __init__(self, lm: torch.nn.Module, chunk_tokens: int) -> None:
        super().__init__()
        if chunk_tokens <= 0:
            raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens}")
        changed = [k for k in LOGIT_TRANSFORMS if getattr(lm.config, k, None) not in (None, 1.0)]
        if changed:  # those models change the logits after the head; this loss would silently ignore it
            raise ValueError(f"{type(lm).__name__} transforms its logits ({', '.join(changed)}); "
                             "the chunked loss supports plain linear LM heads (Qwen2, Llama, Mistral, ...)")
        self.lm = lm
        self.chunk_tokens = chunk_tokens

    def forward(self, targets: torch.Tensor, **model_kwargs: Any) -> torch.Tensor:
        hidden = self.lm.get_decoder()(**model_kwargs).last_hidden_state
        n_chunks = chunks_for(targets.numel(), self.chunk_tokens)
        return chunked_loss_sum(hidden, targets, self.lm.get_output_embeddings(), n_chunks)
