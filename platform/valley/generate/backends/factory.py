"""`make_backend`: a backend by name, kept out of base.py so that no backend module imports a module that
imports it back (hf.py and vllm.py import base.py; only this module imports them, lazily)."""

from __future__ import annotations

from typing import Any

from valley.generate.backends.base import AsyncBackend, Backend


def make_backend(kind: str, model: str, **options: Any) -> Backend:
    """Build a backend by name; imports lazily so a CPU install never imports vLLM."""
    if kind == "transformers":
        from valley.generate.backends.hf import TransformersBackend

        return TransformersBackend(model, **options)
    if kind == "vllm":
        from valley.generate.backends.vllm import VLLMBackend

        return VLLMBackend(model, **options)
    raise ValueError(f"unknown generation backend {kind!r} (transformers | vllm)")


def make_async_backend(kind: str, model: str, *, batch_size: int, **options: Any) -> AsyncBackend:
    """The stream pool's engine by name: vLLM's async engine (continuous batching), or the transformers
    backend behind a micro-batcher (`batch_size` requests per `generate` call; HF cannot batch continuously)."""
    if kind == "vllm":
        from valley.generate.backends.vllm_async import VLLMAsyncBackend

        return VLLMAsyncBackend(model, **options)
    from valley.generate.backends.microbatch import MicroBatcher

    return MicroBatcher(make_backend(kind, model, **options), batch_size)
