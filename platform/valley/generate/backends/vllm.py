"""vLLM backend: one `vllm.LLM` engine (tensor parallel over the replica's GPUs) per Ray replica.

vLLM is imported here only, when the config selects it, so CPU installs never need it. Prompts are
passed as token ids tokenized without special tokens, exactly like the transformers backend, because
the chat template already carries BOS; letting vLLM tokenize the text would add a second BOS for Llama.
`hf_overrides` (e.g. YaRN rope scaling) go to the engine as vLLM's own `hf_overrides`. vLLM reports a
sample cut by `max_model_len` as "length" too; one that stopped short of max_tokens is recorded as "context".
The helpers below (engine arguments, sampling parameters, finish reasons) are shared with the async engine
of the stream pool (`vllm_async.py`), so both give the same samples.
"""

from __future__ import annotations

from typing import Any

from valley.generate.backends.base import Backend, Completion, Request, Sampling
from valley.generate.prompts import encode_prompt


def finish_reason(reason: str, n_tokens: int, max_tokens: int) -> str:
    """vLLM's "length" covers both limits; short of max_tokens it was the context window that ended it."""
    return "context" if reason == "length" and n_tokens < max_tokens else reason


def engine_kwargs_of(model: str, *, tensor_parallel_size: int = 1, dtype: str = "auto",
                     max_model_len: int | None = None, gpu_memory_utilization: float = 0.9,
                     distributed_executor_backend: str | None = None, enforce_eager: bool = False,
                     hf_overrides: dict[str, Any] | None = None, engine_kwargs: dict[str, Any] | None = None,
                     **_: Any) -> dict[str, Any]:
    """The engine arguments both vLLM backends build from the pool's options (`vllm.LLM` and
    `AsyncEngineArgs` take the same names), so the sync and async engines load the same model the same way."""
    kwargs: dict[str, Any] = {
        "model": model,
        "tokenizer": model,
        "tensor_parallel_size": tensor_parallel_size,
        "dtype": dtype,
        "gpu_memory_utilization": gpu_memory_utilization,
        "enforce_eager": enforce_eager,
        "seed": 0,  # per-request seeds decide the samples
    }
    if max_model_len:
        kwargs["max_model_len"] = max_model_len
    if hf_overrides:
        kwargs["hf_overrides"] = dict(hf_overrides)
    if tensor_parallel_size > 1:
        # Inside a Ray actor that already holds `tensor_parallel_size` GPUs, worker processes are
        # the simplest correct choice; "ray" is the alternative on multi-node engines.
        kwargs["distributed_executor_backend"] = distributed_executor_backend or "mp"
    if _on_cpu():
        # vLLM's CPU build fails a seeded request whose prompt is prefilled in chunks (it rewinds the
        # request's generator offset, which CPU generators do not have): whole prompts only on CPU
        kwargs["enable_chunked_prefill"] = False
    kwargs.update(engine_kwargs or {})
    return kwargs


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def sampling_params(request: Request, sampling: Sampling) -> Any:
    """vLLM's SamplingParams of one request: its own seed and budget, detokenized without special tokens."""
    from vllm import SamplingParams

    greedy = sampling.temperature == 0
    return SamplingParams(n=1, temperature=sampling.temperature, top_p=1.0 if greedy else sampling.top_p,
                          max_tokens=request.budget(sampling), seed=request.seed, skip_special_tokens=True,
                          ignore_eos=sampling.ignore_eos)


def tokens_prompt(tokenizer: Any, request: Request) -> Any:
    """The prompt as token ids, tokenized without special tokens (the chat template carries BOS)."""
    from vllm.inputs import TokensPrompt

    return TokensPrompt(prompt_token_ids=encode_prompt(tokenizer, request.prompt))


def to_completion(request: Request, output: Any, sampling: Sampling) -> Completion:
    """A finished vLLM `CompletionOutput` as the stage's Completion (finish reason stop/length/context)."""
    if output.finish_reason not in ("stop", "length"):
        raise RuntimeError(f"vLLM request {request.question_id}/{request.sample_idx} ended with "
                           f"{output.finish_reason!r}")
    n = len(output.token_ids)
    return Completion(request.question_id, request.sample_idx, output.text, n,
                      finish_reason(output.finish_reason, n, request.budget(sampling)))


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(self, model: str, **options: Any):
        from vllm import LLM

        self.llm = LLM(**engine_kwargs_of(model, **options))
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, requests: list[Request], sampling: Sampling) -> list[Completion]:
        if not requests:
            return []
        prompts = [tokens_prompt(self.tokenizer, r) for r in requests]
        params = [sampling_params(r, sampling) for r in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [to_completion(req, out.outputs[0], sampling) for req, out in zip(requests, outputs, strict=True)]

    def close(self) -> None:
        engine = getattr(self.llm, "llm_engine", None)
        shutdown = getattr(engine, "shutdown", None)
        if callable(shutdown):
            shutdown()
        del self.llm
