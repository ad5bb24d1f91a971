"""Chat templating with the student's own template, tokenizing, and assistant-only loss masks.

The mask comes from character offsets: render the conversation once with and once without the
assistant turn; every token that ends past the prompt's last character belongs to the assistant. That
works for any template (ChatML for Qwen, header tokens for Llama 3.1) without `{% generation %}` markers,
which most released templates lack.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from valley.errors import ConfigError


@dataclass
class Encoded:
    input_ids: list[int]
    loss_mask: list[int]
    prompt_chars: int  # length of the rendered prompt (everything before the assistant turn)
    text: str  # the whole rendered conversation
    offsets: list[tuple[int, int]] = field(default_factory=list)  # each token's characters in `text` (the audit's)


def load_tokenizer(path: str):
    """A fast (Rust) Hugging Face tokenizer with a chat template, loaded from a local directory."""
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise ConfigError(f"tokenizer directory {path} does not exist")
    tok = AutoTokenizer.from_pretrained(path)
    if not getattr(tok, "is_fast", False):
        raise ConfigError(f"tokenizer at {path} is not a fast tokenizer; offsets are needed for loss masks")
    if not tok.chat_template:
        raise ConfigError(f"tokenizer at {path} has no chat_template; the student's template is required")
    return tok


class ChatEncoder:
    """Renders (question, response) pairs through the tokenizer's template and tokenizes them."""

    def __init__(self, tokenizer_path: str, system_prompt: str | None = None):
        self.tok = load_tokenizer(tokenizer_path)
        self.system_prompt = system_prompt
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        if self.pad_id is None:
            raise ConfigError(f"tokenizer at {tokenizer_path} has neither a pad nor an eos token")

    def messages(self, question: str, response: str | None = None) -> list[dict]:
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt is not None else []
        msgs.append({"role": "user", "content": question})
        if response is not None:
            msgs.append({"role": "assistant", "content": response})
        return msgs

    def render(self, question: str, response: str) -> tuple[str, int]:
        """The full conversation text and the length of its prompt part."""
        prompt = self.tok.apply_chat_template(self.messages(question), tokenize=False, add_generation_prompt=True)
        full = self.tok.apply_chat_template(self.messages(question, response), tokenize=False)
        if not full.startswith(prompt):
            raise ConfigError(
                "the chat template renders the prompt differently with and without the assistant turn; "
                "cannot locate the assistant tokens"
            )
        return full, len(prompt)

    def encode(self, pairs: list[tuple[str, str]]) -> list[Encoded]:
        return list(self.iter_encode(pairs))

    def iter_encode(self, pairs: list[tuple[str, str]]) -> Iterator[Encoded]:
        """Encode a batch, handing documents out one at a time: a caller that keeps only ids and mask
        frees each one's text and offsets (some 100 bytes a token as Python objects) as it goes."""
        rendered = [self.render(q, r) for q, r in pairs]
        # The Rust encoder directly: the transformers wrapper doubles the cost by converting every
        # offset to Python objects twice. No special tokens added: the template wrote BOS/headers.
        batch = self.tok.backend_tokenizer.encode_batch([text for text, _ in rendered], add_special_tokens=False)
        for (text, prompt_chars), enc in zip(rendered, batch):
            # Offsets are in text order, so the assistant span starts at the first token ending past the prompt.
            offsets = enc.offsets
            first = bisect.bisect_right(offsets, prompt_chars, key=lambda span: span[1])
            n = len(enc.ids)
            yield Encoded(enc.ids, [0] * first + [1] * (n - first), prompt_chars, text, offsets)
