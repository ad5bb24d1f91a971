"""The plan's assumptions: everything `valley plan` does not measure, each a command-line flag."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Assumptions:
    """Everything the plan does not measure. Defaults: MFU 0.38 for 7B-8B bf16 SFT at long context with
    ZeRO-3 and FlashAttention (public reports put such runs at 35-40%); 2,500 generated tokens/s per GPU
    for a 7B-8B model under vLLM with many long sequences in flight; 6,000 tokens per distillation trace
    (a long R1-style reasoning trace plus its prompt) when neither manifests nor the corpus are readable;
    97% of every packed row filled; 10% of device memory kept free for the CUDA context, NCCL and the
    allocator's fragmentation."""

    mfu: float = 0.38
    gen_tokens_per_s: float = 2500.0
    tokens_per_trace: float = 6000.0
    loss_token_fraction: float = 0.9  # share of a trace's tokens that are trained on (assistant turn)
    pack_efficiency: float = 0.97
    reserve_fraction: float = 0.10
    problems: int | None = None  # LCB problems to evaluate; default: counted, else the release's size
