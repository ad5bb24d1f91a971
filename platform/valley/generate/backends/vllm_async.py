"""vLLM's async engine for the stream pool: every request of every concurrent problem goes straight into
one engine, whose scheduler batches continuously (a finished sequence's slot is refilled at the next step).

`vllm.LLM.generate` (the sync backend) returns when its whole batch is done, so a batch with one 30K-token
answer keeps the engine nearly empty while it finishes. Here a replica holds `pool.max_in_flight` samples
of several problems in the engine at once and each problem returns as soon as its own samples are done.
Engine arguments, prompts (token ids, no special tokens), per-request seeds and budgets, and the finish
reason (stop / length / context) are the sync backend's (`vllm.py`), so both give the same samples.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from valley.generate.backends.base import AsyncBackend, Completion, Request, Sampling
from valley.generate.backends.vllm import engine_kwargs_of, sampling_params, to_completion, tokens_prompt


class VLLMAsyncBackend(AsyncBackend):
    name = "vllm"

    def __init__(self, model: str, **options: Any):
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs, AsyncLLMEngine
        from vllm.usage.usage_lib import UsageContext

        kwargs = engine_kwargs_of(model, **options)
        kwargs.setdefault("disable_log_stats", True)  # per-step stats lines would flood the replica's log
        # the scheduler defaults of `vllm.LLM` (batch inference: e.g. 256 sequences at once), not those of
        # a bare engine (128 sequences, a smaller prefill budget)
        self.engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**kwargs), usage_context=UsageContext.LLM_CLASS)
        # the same tokenizer files vLLM loads; prompts go in as ids, so vLLM never tokenizes text itself
        self.tokenizer = AutoTokenizer.from_pretrained(kwargs.get("tokenizer") or model)

    async def generate(self, requests: list[Request], sampling: Sampling) -> list[Completion]:
        return list(await asyncio.gather(*(self._one(r, sampling) for r in requests)))

    async def _one(self, request: Request, sampling: Sampling) -> Completion:
        from vllm.sampling_params import RequestOutputKind

        # unique per call: a problem re-sent after a failure must not collide with a request still draining
        request_id = f"{request.question_id}/{request.sample_idx}/{uuid.uuid4().hex[:8]}"
        params = sampling_params(request, sampling)
        # only the finished output, as `vllm.LLM` asks for: no per-step wake-up of every waiting request
        params.output_kind = RequestOutputKind.FINAL_ONLY
        final = None
        async for output in self.engine.generate(tokens_prompt(self.tokenizer, request), params, request_id):
            final = output
        if final is None or not final.finished:
            raise RuntimeError(f"vLLM request {request_id} ended without a finished output")
        return to_completion(request, final.outputs[0], sampling)

    def close(self) -> None:
        shutdown = getattr(self.engine, "shutdown", None)
        if callable(shutdown):
            shutdown()
