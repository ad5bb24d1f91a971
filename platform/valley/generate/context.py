"""Context length: `max_tokens` plus the longest prompt must fit the model's window, checked before any engine.

The window is what vLLM derives from the model's config.json (the smallest of the position keys, times
the rope-scaling factor; YaRN scales `original_max_position_embeddings`), after the config's
`hf_overrides`/`rope_scaling` are applied. vLLM refuses a `max_model_len` above it, and a sample that
reaches it stops short of its token budget, which would score as "incomplete" for the wrong reason; both
are cheaper to refuse at stage start than after an engine has loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from valley.errors import ConfigError

# The keys vLLM reads a window from (it takes the smallest present).
WINDOW_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
               "max_target_positions", "max_sequence_length", "max_seq_length", "seq_len")
# Rope types whose max_position_embeddings already is the scaled window (vLLM does not multiply them).
PRESCALED_ROPE = frozenset({"su", "longrope", "llama3"})
ROPE_KEEP = ("rope_theta", "partial_rotary_factor")  # kept when an override replaces rope_parameters


@dataclass(frozen=True)
class ModelWindow:
    """The positions a model attends over, and where that number comes from (for error messages)."""

    tokens: int | None  # None: config.json names no window (then nothing is checked)
    native_key: str | None = None
    native: int | None = None
    rope_type: str | None = None
    factor: float | None = None
    scaled_from: int | None = None  # YaRN: original_max_position_embeddings

    def describe(self) -> str:
        if self.tokens is None:
            return "config.json names no context window"
        text = f"{self.native_key}={self.native}"
        if self.factor is None:
            return f"{text}, no rope_scaling"
        return (f"{text}, rope_scaling {self.rope_type} factor {self.factor:g} over "
                f"{self.scaled_from} positions = {self.tokens}")


def read_model_config(model: str) -> dict[str, Any]:
    """The model's config.json as a dict (a local directory or a Hub id transformers can resolve)."""
    from transformers import PretrainedConfig

    try:
        config, _ = PretrainedConfig.get_config_dict(model)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"generate model {model!r}: cannot read its config.json ({exc})") from exc
    return dict(config)


def _rope_dict(config: dict[str, Any]) -> dict[str, Any] | None:
    rope = config.get("rope_scaling") or config.get("rope_parameters")
    return rope if isinstance(rope, dict) else None


def merge_overrides(config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """config.json with `overrides` on top. A `rope_scaling` override lands in `rope_parameters` when the
    config uses that newer key, keeping its rope_theta (so the override cannot reset the base frequency)."""
    out = dict(config)
    for key, value in overrides.items():
        if key == "rope_scaling" and isinstance(out.get("rope_parameters"), dict) and isinstance(value, dict):
            kept = {k: out["rope_parameters"][k] for k in ROPE_KEEP if k in out["rope_parameters"]}
            out["rope_parameters"] = {**kept, **value}
            out.pop("rope_scaling", None)
        else:
            out[key] = value
    return out


def model_window(config: dict[str, Any]) -> ModelWindow:
    """The context window vLLM derives from a (merged) config.json dict."""
    present = [(config[k], k) for k in WINDOW_KEYS if isinstance(config.get(k), int) and config[k] > 0]
    if not present and isinstance(config.get("text_config"), dict):  # multimodal wrappers
        return model_window(config["text_config"])
    if not present:
        return ModelWindow(None)
    native, key = min(present)
    rope = _rope_dict(config)
    rope_type = str(rope.get("rope_type", rope.get("type", "default"))) if rope else "default"
    if rope_type == "default" or rope_type in PRESCALED_ROPE:
        return ModelWindow(native, key, native)
    factor = float(rope.get("factor", 1.0))
    base = int(rope.get("original_max_position_embeddings") or native) if rope_type == "yarn" else native
    return ModelWindow(int(base * factor), key, native, rope_type, factor, base)


def _fix(cfg: Any, window: ModelWindow, needed: int) -> str:
    """The ways out: a smaller budget, a longer max_model_len, or rope scaling (YaRN) reaching `needed`."""
    base = window.scaled_from or window.native or needed
    factor = max(2, math.ceil(needed / base))
    raise_len = ""
    if cfg.max_model_len is not None and window.tokens is not None and needed <= window.tokens:
        raise_len = f"raise max_model_len to at least {needed} (the window allows {window.tokens}), or "
    if window.factor is not None and window.tokens is not None and needed <= window.tokens:
        return f"Fix: lower max_tokens, or {raise_len.removesuffix(', or ')}."  # rope scaling already reaches it
    return (f"Fix: lower max_tokens, or {raise_len}extend the window where the model card allows it, e.g. "
            f"rope_scaling: {{rope_type: yarn, factor: {factor}.0, original_max_position_embeddings: {base}}} "
            f"(Qwen2.5's card advises factor 4.0 over 32768) with max_model_len >= max_tokens + the longest "
            f"prompt.")


def check_budget(cfg: Any, window: ModelWindow) -> int | None:
    """Refuse a max_model_len above the window, or a max_tokens that leaves no room for a prompt.
    Returns the usable context (max_model_len, else the window; None when unknown)."""
    overrides = cfg.model_overrides()
    scaling = f"rope_scaling={overrides.get('rope_scaling')}" if "rope_scaling" in overrides else "no rope_scaling set"
    where = f"generate config {cfg.name!r} (model {cfg.model}, {scaling})"
    if window.tokens is not None and cfg.max_model_len is not None and cfg.max_model_len > window.tokens:
        raise ConfigError(
            f"{where}: max_model_len={cfg.max_model_len} is longer than the model's context window "
            f"({window.describe()}); vLLM refuses it. {_fix(cfg, window, cfg.max_model_len)}")
    limit = cfg.max_model_len or window.tokens
    if limit is not None and cfg.max_tokens >= limit:
        what = f"max_model_len={cfg.max_model_len}" if cfg.max_model_len else "the model's context window"
        raise ConfigError(
            f"{where}: max_tokens={cfg.max_tokens} leaves no room for a prompt in {what} ({limit} tokens; "
            f"model window: {window.describe()}); max_tokens plus the longest prompt must fit. "
            f"{_fix(cfg, window, cfg.max_tokens + 1)}")
    return limit


def check_model_context(cfg: Any) -> ModelWindow:
    """Stage-start check against the model's config.json (with the config's overrides applied)."""
    window = model_window(merge_overrides(read_model_config(cfg.model), cfg.model_overrides()))
    check_budget(cfg, window)
    return window


def check_prompts(cfg: Any, window: ModelWindow, prompt_tokens: dict[str, int]) -> None:
    """Refuse a run whose longest prompt plus max_tokens does not fit (it would stop on the window)."""
    limit = cfg.max_model_len or window.tokens
    if limit is None or not prompt_tokens:
        return
    qid, longest = max(prompt_tokens.items(), key=lambda kv: (kv[1], kv[0]))
    if longest + cfg.max_tokens > limit:
        what = f"max_model_len={cfg.max_model_len}" if cfg.max_model_len else "the model's context window"
        raise ConfigError(
            f"generate config {cfg.name!r} (model {cfg.model}): max_tokens={cfg.max_tokens} plus the longest "
            f"prompt ({longest} tokens, problem {qid}) is {longest + cfg.max_tokens} tokens, more than {what} "
            f"({limit} tokens; model window: {window.describe()}). "
            f"{_fix(cfg, window, longest + cfg.max_tokens)}")


def prompt_token_counts(model: str, prompts: dict[str, str]) -> dict[str, int]:
    """Tokens of each rendered prompt, counted the way the backends encode them (no added specials)."""
    from transformers import AutoTokenizer

    from valley.generate.prompts import encode_prompt

    tokenizer = AutoTokenizer.from_pretrained(model)
    return {qid: len(encode_prompt(tokenizer, text)) for qid, text in prompts.items()}
