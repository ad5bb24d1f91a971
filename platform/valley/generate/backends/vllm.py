"""vLLM backend: one `vllm.LLM` engine (tensor parallel over the replica's GPUs) per Ray replica.

vLLM is imported here only, when the config selects it, so CPU installs never need it. Prompts are
passed as token ids tokenized without special tokens, exactly like the transformers backend, because
the chat template already carries BOS; letting vLLM tokenize the text would add a second BOS for Llama.
`hf_overrides` (e.g. YaRN rope scaling) go to the engine as vLLM's own `hf_overrides`. vLLM reports a
sample cut by `max_model_len` as "length" too; one that stopped short of max_tokens is recorded as "context".
"""

from __future__ import annotations

from typing import Any

from valley.generate.backends.base import Backend, Completion, Request, Sampling
from valley.generate.prompts import encode_prompt


def finish_reason(reason: str, n_tokens: int, max_tokens: int) -> str:
    """vLLM's "length" covers both limits; short of max_tokens it was the context window that ended it."""
    return "context" if reason == "length" and n_tokens < max_tokens else reason


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(self, model: str, *, tensor_parallel_size: int = 1, dtype: str = "auto",
                 max_model_len: int | None = None, gpu_memory_utilization: float = 0.9,
                 distributed_executor_backend: str | None = None, enforce_eager: bool = False,
                 hf_overrides: dict[str, Any] | None = None, engine_kwargs: dict[str, Any] | None = None,
                 **_: Any):
        from vllm import LLM

        kwargs: dict[str, Any] = {
            "model": model,
            "tokenizer": model,
            "tensor_parallel_size": tensor_parallel_size,
            "dtype": dtype,
            "gpu_memory_utilization": gpu_memory_utilization,
            "enforce_eager": enforce_eager,
            "seed": 0,  # per-request seeds below decide the samples
        }
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        if hf_overrides:
            kwargs["hf_overrides"] = dict(hf_overrides)
        if tensor_parallel_size > 1:
            # Inside a Ray actor that already holds `tensor_parallel_size` GPUs, worker processes are
            # the simplest correct choice; "ray" is the alternative on multi-node engines.
            kwargs["distributed_executor_backend"] = distributed_executor_backend or "mp"
        kwargs.update(engine_kwargs or {})
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, requests: list[Request], sampling: Sampling) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not requests:
            return []
        prompts = [TokensPrompt(prompt_token_ids=encode_prompt(self.tokenizer, r.prompt))
                   for r in requests]
        greedy = sampling.temperature == 0
        params = [
            SamplingParams(n=1, temperature=sampling.temperature, top_p=1.0 if greedy else sampling.top_p,
                           max_tokens=sampling.max_tokens, seed=r.seed, skip_special_tokens=True)
            for r in requests
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        completions = []
        for req, out in zip(requests, outputs, strict=True):
            c = out.outputs[0]
            if c.finish_reason not in ("stop", "length"):
                raise RuntimeError(f"vLLM request {req.question_id}/{req.sample_idx} ended with {c.finish_reason!r}")
            completions.append(Completion(req.question_id, req.sample_idx, c.text, len(c.token_ids),
                                          finish_reason(c.finish_reason, len(c.token_ids), sampling.max_tokens)))
        return completions

    def close(self) -> None:
        engine = getattr(self.llm, "llm_engine", None)
        shutdown = getattr(engine, "shutdown", None)
        if callable(shutdown):
            shutdown()
        del self.llm
