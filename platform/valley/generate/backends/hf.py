"""Transformers backend: batched `generate` with left padding, the embedded CPU default.

Sampling is done by a logits processor that draws each row's token from that row's own generator
(seeded per sample) and hands `generate` a one-hot distribution to pick greedily. That keeps HF's
batched decoding loop and KV cache while making every sample independent of its batch-mates.

Each row's budget is min(max_tokens, context - its own prompt length) (context: `max_model_len`, else the
model's window after `hf_overrides`); a row cut by the window finishes as "context", not "length". Rows
with shorter budgets are decoded along with the batch and their extra tokens dropped, which leaves their
samples unchanged (a token never depends on later ones). A request may carry its own `max_tokens`, and
`Sampling.ignore_eos` decodes every row to its budget (benchmarks of long-tailed lengths).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LogitsProcessor

from valley.generate.backends.base import Backend, Completion, Request, Sampling
from valley.generate.context import merge_overrides, model_window


class SeededSampler(LogitsProcessor):
    """Temperature + nucleus (top-p) sampling with one torch.Generator per batch row."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float):
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        keep = (sorted_p.cumsum(-1) - sorted_p) < self.top_p
        sorted_p = sorted_p * keep
        cdf = sorted_p.cumsum(-1)
        u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in self.generators])
        target = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
        pos = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[-1] - 1)
        token = order.gather(-1, pos)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, token.to(scores.device), 0.0)


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a turn: the generation config's (Qwen lists two) plus the tokenizer's."""
    ids: list[int] = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (gen_eos, tokenizer.eos_token_id):
        if value is None:
            continue
        for i in value if isinstance(value, (list, tuple)) else [value]:
            if i not in ids:
                ids.append(int(i))
    if not ids:
        raise ValueError("model has no end-of-sequence token; cannot tell stop from length")
    return ids


def finish(new_tokens: list[int], eos_ids: set[int], max_tokens: int, *, context: bool = False) -> tuple[int, str]:
    """(generated token count, finish reason) of one row of `generate`'s output (pads after EOS).
    `context`: `max_tokens` is this row's room left in the context window, not the token budget."""
    for i, tok in enumerate(new_tokens[:max_tokens]):
        if tok in eos_ids:
            return i + 1, "stop"
    return min(len(new_tokens), max_tokens), "context" if context else "length"


def load_config(model: str, overrides: dict[str, Any] | None) -> Any:
    """The model's config with `overrides` applied through its config class (so rope settings are
    validated and standardised as if they had been in config.json)."""
    from transformers import AutoConfig, PretrainedConfig

    if not overrides:
        return AutoConfig.from_pretrained(model)
    raw, _ = PretrainedConfig.get_config_dict(model)
    merged = merge_overrides(dict(raw), overrides)
    return AutoConfig.for_model(merged.pop("model_type"), **merged)


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self, model: str, *, dtype: str = "auto", num_threads: int | None = None,
                 device: str | None = None, max_model_len: int | None = None,
                 hf_overrides: dict[str, Any] | None = None, **_: Any):
        if num_threads:
            torch.set_num_threads(max(1, int(num_threads)))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(model, padding_side="left")
        torch_dtype: Any = dtype
        if dtype == "auto" and self.device.type == "cpu":
            torch_dtype = torch.float32  # bf16 matmuls are slow or missing on many CPUs
        elif dtype != "auto":
            torch_dtype = getattr(torch, dtype)
        config = load_config(model, hf_overrides)
        self.model = AutoModelForCausalLM.from_pretrained(model, config=config, dtype=torch_dtype).to(self.device).eval()
        self.context = max_model_len or model_window(config.to_dict()).tokens  # None: unbounded
        self.eos_ids = eos_token_ids(self.model, self.tokenizer)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.eos_ids[0]

    def generate(self, requests: list[Request], sampling: Sampling) -> list[Completion]:
        if not requests:
            return []
        enc = self.tokenizer([r.prompt for r in requests], return_tensors="pt", padding=True,
                             add_special_tokens=False)  # the chat template already added BOS etc.
        enc = {k: v.to(self.device) for k, v in enc.items()}
        processors = []
        if sampling.temperature > 0:
            processors.append(SeededSampler([r.seed for r in requests], sampling.temperature, sampling.top_p))
        asked = [r.budget(sampling) for r in requests]
        budgets = self._budgets(requests, enc["attention_mask"].sum(dim=1).tolist(), asked)
        # ignore_eos: an id no logit can produce, so no row stops before its budget (None would fall back
        # to the model's generation config)
        stop_ids = [self.model.get_output_embeddings().weight.shape[0]] if sampling.ignore_eos else self.eos_ids
        gen_cfg = GenerationConfig(do_sample=False, max_new_tokens=max(budgets),
                                   eos_token_id=stop_ids, pad_token_id=self.pad_id)
        with torch.inference_mode():
            out = self.model.generate(**enc, generation_config=gen_cfg, logits_processor=processors)
        new = out[:, enc["input_ids"].shape[1]:].tolist()
        eos = set() if sampling.ignore_eos else set(self.eos_ids)
        completions = []
        for req, row, budget, wanted in zip(requests, new, budgets, asked, strict=True):
            n, reason = finish(row, eos, budget, context=budget < wanted)
            text = self.tokenizer.decode(row[:n], skip_special_tokens=True)
            completions.append(Completion(req.question_id, req.sample_idx, text, n, reason))
        return completions

    def _budgets(self, requests: list[Request], prompt_lens: list[int], asked: list[int]) -> list[int]:
        """Tokens each row may generate: its budget, or less where its prompt leaves less context."""
        if self.context is None:
            return list(asked)
        budgets = [min(want, self.context - int(n)) for n, want in zip(prompt_lens, asked, strict=True)]
        for req, n, budget in zip(requests, prompt_lens, budgets, strict=True):
            if budget < 1:
                raise ValueError(f"prompt of {req.question_id}/{req.sample_idx} ({int(n)} tokens) fills the "
                                 f"{self.context}-token context")
        return budgets
