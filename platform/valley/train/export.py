"""Export the trained model as a Hugging Face directory (safetensors + tokenizer + generation config).

Under ZeRO-3 each rank holds a slice of every parameter, so the full weights are gathered one parameter
at a time (never the whole model on one GPU at once) and collected on rank 0's CPU, which saves them with
`save_pretrained` and uploads the directory. The result loads with `AutoModelForCausalLM.from_pretrained`
and with vLLM.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from valley.storage import Storage
from valley.train.transfer import upload_dir

EXPORT_MARKER = "valley_train.json"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def gather_state_dict(model: torch.nn.Module, rank: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Collective: full tensors of every saved parameter/buffer, on rank 0 only (empty dict elsewhere). A
    model that ZeRO-3 never partitioned (no `ds_id`) is read as it is, without DeepSpeed."""
    keys = set(model.state_dict().keys())
    out: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        partitioned = hasattr(param, "ds_id")
        if partitioned:
            import deepspeed
        ctx = deepspeed.zero.GatheredParameters([param], modifier_rank=None) if partitioned \
            else contextlib.nullcontext()
        with ctx:
            if rank == 0 and name in keys:
                out[name] = param.detach().to("cpu", dtype=dtype).clone()
    if rank == 0:
        for name, buf in model.named_buffers():
            if name in keys:
                out[name] = buf.detach().to("cpu").clone()
    return out


def write_hf_dir(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], dtype: torch.dtype,
                 tokenizer_dir: str, base_model_dir: str, out_dir: str) -> None:
    """Rank 0: weights, config, tokenizer and generation config into a local directory."""
    from transformers import AutoTokenizer, GenerationConfig

    model.config.dtype = dtype
    model.config.use_cache = True
    model.save_pretrained(out_dir, state_dict=state_dict, safe_serialization=True, max_shard_size="4GB")
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.save_pretrained(out_dir)
    if (Path(base_model_dir) / "generation_config.json").exists():
        gen = GenerationConfig.from_pretrained(base_model_dir)
    else:
        gen = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    gen.save_pretrained(out_dir)


def is_exported(storage: Storage, *parts: str) -> bool:
    """An export is whole once its marker exists: `export` writes the marker after every other file."""
    return storage.exists(*parts, EXPORT_MARKER)


def export(model: torch.nn.Module, rank: int, dtype_name: str, tokenizer_dir: str, base_model_dir: str,
           storage_root: str, out_parts: list[str], extra: dict[str, Any] | None = None) -> list[str]:
    """Collective: gather, then rank 0 writes `<out_parts>/…` under the storage root, the marker
    (`valley_train.json`, holding `extra`) last; returns the file list."""
    dtype = DTYPES[dtype_name]
    state = gather_state_dict(model, rank, dtype)
    if rank != 0:
        return []
    storage = Storage(storage_root)
    with tempfile.TemporaryDirectory(prefix="valley-export-") as tmp:
        write_hf_dir(model, state, dtype, tokenizer_dir, base_model_dir, tmp)
        written = upload_dir(tmp, storage, *out_parts)
    storage.write_text(json.dumps(extra or {}, indent=2, default=str), *out_parts, EXPORT_MARKER)
    return [*written, EXPORT_MARKER]
