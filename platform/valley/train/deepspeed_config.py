"""The DeepSpeed config of a run (pure): ZeRO-3 as the paper-scale default, user overrides merged on top.

Batch sizes are written out explicitly (micro × grad-accum × world = global) so DeepSpeed's own check
agrees with ours. With `batch_unit: examples` a step's micro-batches vary, so the config states one
micro-batch per step; the loop marks each step's end itself (`set_gradient_accumulation_boundary`),
which DeepSpeed then follows instead of its count.

The optimizer is a torch AdamW that the loop passes as a client optimizer (ZeRO accepts it with
`zero_allow_untested_optimizer`), on GPU and CPU alike; only with `offload_optimizer` does DeepSpeed build
its own (CPU Adam over the offloaded state).
"""

from __future__ import annotations

import copy
from typing import Any

from valley.train.config import TrainConfig


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def uses_ds_optimizer(cfg: TrainConfig) -> bool:
    """DeepSpeed builds its own optimizer only where it has to: offloaded optimizer state (CPU Adam)."""
    return cfg.offload_optimizer


def build_ds_config(cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    if world_size != cfg.num_workers:
        raise ValueError(f"world size {world_size} does not match num_workers={cfg.num_workers}")
    if cfg.resolved_batch_unit() == "rows":
        accum, train_batch = cfg.grad_accum_steps(), cfg.global_batch_size
    else:
        accum, train_batch = 1, cfg.micro_batch_size * world_size
    bf16 = cfg.resolved_precision() == "bf16"
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.zero_stage >= 2:
        zero.update(overlap_comm=True, contiguous_gradients=True, reduce_bucket_size=5e8)
    if cfg.zero_stage == 3:
        zero.update(
            stage3_prefetch_bucket_size=5e8,
            stage3_param_persistence_threshold=1e6,
            stage3_max_live_parameters=1e9,
            stage3_max_reuse_distance=1e9,
            stage3_gather_16bit_weights_on_model_save=False,  # export gathers parameter by parameter
        )
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cfg.use_gpu}
    if cfg.offload_params and cfg.zero_stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": cfg.use_gpu}
    ds: dict[str, Any] = {
        "train_batch_size": train_batch,
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": cfg.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,  # the loop logs; keep DeepSpeed quiet
        "wall_clock_breakdown": False,
    }
    if bf16 and cfg.zero_stage >= 1:
        # Gradients are reduced and accumulated in fp32 so a 128-row global batch sums without bf16 loss.
        ds["data_types"] = {"grad_accum_dtype": "fp32"}
    if uses_ds_optimizer(cfg):
        ds["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": cfg.learning_rate, "betas": list(cfg.adam_betas), "eps": cfg.adam_eps,
                       "weight_decay": cfg.weight_decay},
        }
    return deep_merge(ds, cfg.deepspeed)
