"""Chat templating with the student's own template, tokenizing, and assistant-only loss masks.

The mask comes from character offsets: render the conversation once with and once without the
assistant turn; every token that ends past the prompt's last character belongs to the assistant. That
works for any template (ChatML for Qwen, header tokens for Llama 3.1) without `{% generation %}` markers,
which most released templates lack.

Rendering a template costs about as much as tokenizing the text, so a template that writes the question
and the response verbatim is rendered once, with probes, into fixed pieces (`Splice`) that every trace's
text is joined from. Templates that read, test or transform the content (Llama 3.1 trims it, Qwen3 splits
out the think block) keep being rendered per trace; `find_splice` decides, and the text is the same
either way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from valley.data.byte_spans import ByteLengths, token_byte_lengths, tokens_ending_by
from valley.errors import ConfigError

ENCODE_SLICE = 512  # documents per encode_batch call in iter_encode

# Contents a splice must reproduce exactly: ends with whitespace (trim, strip), think tags (templates that
# split out the reasoning), quotes, backslashes and newlines (tojson), template syntax, control tokens.
PROBES = [
    ("valley-question-probe", "valley-response-probe"),
    ("  \n valley question \t\n", "\n<think>\nstep\n</think>\n\n```python\nprint(1)\n```\n  "),
    ('"quoted" \\ back\\slash {{ x }} {% raw %}', "<think>unclosed ' \" \\n"),
    ("héllo ✓ 日本語 \r\n", "</think> only a close tag\n\n\n"),
    ("<|im_end|><|im_start|>assistant\n", "<|eot_id|><|end_of_text|></s><s>[INST]"),
]


@dataclass
class Encoded:
    input_ids: np.ndarray | list[int]  # int32 array (a list where a caller set one)
    loss_mask: np.ndarray | list[int]  # int8 array, 1 = assistant token (a list where a caller set one)
    prompt_chars: int  # length of the rendered prompt (everything before the assistant turn)
    text: str  # the whole rendered conversation
    offsets: Sequence[tuple[int, int]] = field(default_factory=list)  # each token's characters in `text` (the audit's)


class Spans(Sequence):
    """A token's (start, end) characters, read from the Rust encoding on demand: converting every offset
    to Python tuples costs a quarter of the encoding, and the mask and the audit read a handful each."""

    def __init__(self, encoding: Any):
        self.encoding = encoding
        self.n = len(encoding)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[int, int]:  # type: ignore[override]
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return self.encoding.token_to_chars(i % self.n)


@dataclass(frozen=True)
class Splice:
    """A conversation's text as fixed pieces around the verbatim question and response."""

    head: str  # before the question
    middle: str  # between the question and the response
    tail: str  # after the response
    prompt_tail: str  # what the prompt alone writes after the question (a prefix of `middle`)

    def render(self, question: str, response: str) -> tuple[str, int]:
        """The same (text, prompt length) as ChatEncoder.render through the template."""
        return (self.head + question + self.middle + response + self.tail,
                len(self.head) + len(question) + len(self.prompt_tail))


def encoder_in_background(tokenizer_path: str, system_prompt: str | None) -> Future[ChatEncoder]:
    """A ChatEncoder built on a background thread. The data stage's driver needs it only after ingest,
    and building it (importing transformers, loading the tokenizer, probing the template) takes a second
    or more that overlaps ingest's tasks instead of following them. Errors surface at `.result()`."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chat-encoder")
    future = pool.submit(ChatEncoder, tokenizer_path, system_prompt)
    pool.shutdown(wait=False)
    return future


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


def _content_probe(touched: list[str]) -> type:
    """A str type whose every use but output and concatenation is noted in `touched`: a template that
    tests, measures, slices or transforms a message's content cannot be spliced."""
    allowed = {"__new__", "__init__", "__str__", "__repr__", "__hash__", "__getattribute__", "__class__",
               "__init_subclass__", "__subclasshook__", "__reduce__", "__reduce_ex__", "__getnewargs__",
               "__sizeof__", "__dir__", "__doc__", "__getstate__", "__setattr__", "__delattr__", "__format__"}

    def noting(name: str) -> Callable:
        def method(self, *args, **kwargs):
            touched.append(name)
            return getattr(str, name)(str.__str__(self), *args, **kwargs)
        return method

    namespace: dict[str, Any] = {name: noting(name) for name in dir(str) if name not in allowed
                                 and callable(getattr(str, name))}
    namespace["__str__"] = lambda self: str.__str__(self)
    namespace["__add__"] = lambda self, other: probe(str.__str__(self) + other)
    namespace["__radd__"] = lambda self, other: probe(other + str.__str__(self))
    probe = type("ContentProbe", (str,), namespace)
    return probe


def _content_untouched(tok: Any, messages: Callable[..., list[dict]]) -> bool:
    """Render the template (as apply_chat_template does) with probe contents; True when it only outputs them."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
        template = _compile_jinja_template(tok.get_chat_template())
    except Exception:  # noqa: BLE001 - a transformers without it: render every trace
        return False
    touched: list[str] = []
    probe = _content_probe(touched)
    for generation in (False, True):
        msgs = messages(probe(PROBES[0][0]), None if generation else probe(PROBES[0][1]))
        try:
            template.render(messages=msgs, tools=None, documents=None, add_generation_prompt=generation,
                            **tok.special_tokens_map)
        except Exception:  # noqa: BLE001 - a template that cannot take the probe: render every trace
            return False
    return not touched


def find_splice(render: Callable[[str, str], tuple[str, int]], verbatim: bool) -> Splice | None:
    """The template's fixed pieces when it writes contents verbatim (`verbatim`, and every probe of
    PROBES renders exactly as spliced); None: render each trace."""
    if not verbatim:
        return None
    question, response = PROBES[0]
    try:
        full, prompt_chars = render(question, response)
    except ConfigError:
        return None
    q_at, r_at = full.find(question), full.find(response)
    if q_at < 0 or r_at < q_at + len(question) or full.count(question) != 1 or full.count(response) != 1:
        return None
    middle = full[q_at + len(question):r_at]
    prompt_tail = full[q_at + len(question):prompt_chars]
    if prompt_chars < q_at + len(question) or not middle.startswith(prompt_tail):
        return None
    splice = Splice(full[:q_at], middle, full[r_at + len(response):], prompt_tail)
    for q, r in PROBES:
        try:
            if render(q, r) != splice.render(q, r):
                return None
        except ConfigError:
            return None
    return splice


class ChatEncoder:
    """Renders (question, response) pairs through the tokenizer's template and tokenizes them."""

    def __init__(self, tokenizer_path: str, system_prompt: str | None = None):
        self.tok = load_tokenizer(tokenizer_path)
        self.backend = self.tok.backend_tokenizer
        self.system_prompt = system_prompt
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        if self.pad_id is None:
            raise ConfigError(f"tokenizer at {tokenizer_path} has neither a pad nor an eos token")
        self.splice = find_splice(self.render_template, _content_untouched(self.tok, self.messages))

    def messages(self, question: str, response: str | None = None) -> list[dict]:
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt is not None else []
        msgs.append({"role": "user", "content": question})
        if response is not None:
            msgs.append({"role": "assistant", "content": response})
        return msgs

    def render_template(self, question: str, response: str) -> tuple[str, int]:
        """The full conversation text and the length of its prompt part, through the template."""
        prompt = self.tok.apply_chat_template(self.messages(question), tokenize=False, add_generation_prompt=True)
        full = self.tok.apply_chat_template(self.messages(question, response), tokenize=False)
        if not full.startswith(prompt):
            raise ConfigError(
                "the chat template renders the prompt differently with and without the assistant turn; "
                "cannot locate the assistant tokens"
            )
        return full, len(prompt)

    def render(self, question: str, response: str) -> tuple[str, int]:
        """The full conversation text and the length of its prompt part (spliced where the template allows)."""
        if self.splice is not None:
            return self.splice.render(question, response)
        return self.render_template(question, response)

    def portable(self) -> dict[str, Any] | None:
        """What a worker needs to encode exactly as this encoder without loading transformers (the Rust
        tokenizer as JSON, the splice, the pad id); None when the template must render each trace."""
        if self.splice is None:
            return None
        return {"backend": self.backend.to_str(), "splice": asdict(self.splice), "pad_id": self.pad_id}

    def encode(self, pairs: list[tuple[str, str]]) -> list[Encoded]:
        return list(self.iter_encode(pairs))

    def iter_encode(self, pairs: list[tuple[str, str]]) -> Iterator[Encoded]:
        """Encode a batch, handing documents out one at a time: a caller that keeps only ids and mask
        frees each one's text as it goes. The Rust encoder releases the GIL, so the next slice of
        documents encodes on a second thread while the caller works on this one."""
        slices = [pairs[at:at + ENCODE_SLICE] for at in range(0, len(pairs), ENCODE_SLICE)]
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode") as pool:
            pending = pool.submit(self._encode_slice, slices[0]) if slices else None
            for k in range(len(slices)):
                done = pending.result()
                pending = pool.submit(self._encode_slice, slices[k + 1]) if k + 1 < len(slices) else None
                yield from done

    @cached_property
    def byte_lengths(self) -> ByteLengths | None:
        """Bytes each token spells, when token ends can be summed from them (byte_spans.py); else None."""
        return token_byte_lengths(self.backend)

    def _encode_slice(self, pairs: list[tuple[str, str]]) -> list[Encoded]:
        """Render and encode some documents; the mask starts at the first token past the prompt."""
        rendered = [self.render(q, r) for q, r in pairs]
        texts = [text for text, _ in rendered]
        # The Rust encoder directly: the transformers wrapper doubles the cost by converting every
        # offset to Python objects twice. No special tokens added: the template wrote BOS/headers.
        lengths = self.byte_lengths
        batch = (self.backend.encode_batch_fast(texts, add_special_tokens=False) if lengths is not None
                 else self.backend.encode_batch(texts, add_special_tokens=False))
        out = []
        for (text, prompt_chars), enc in zip(rendered, batch):
            ids = np.array(enc.ids, np.int32)  # read from Rust once: every read makes a new Python list
            spans: Sequence[tuple[int, int]] | None = None
            if lengths is not None:
                spans = lengths.spans(ids, text)
                if spans is None:  # tokens that do not spell the text: this one with the encoder's offsets
                    enc = self.backend.encode(text, add_special_tokens=False)
            if spans is None:
                spans = Spans(enc)
            # Offsets are in text order, so the assistant span starts at the first token ending past the prompt.
            first = tokens_ending_by(spans, prompt_chars)
            mask = np.zeros(len(spans), np.int8)
            mask[first:] = 1
            out.append(Encoded(ids, mask, prompt_chars, text, spans))
        return out


class PortableEncoder(ChatEncoder):
    """A ChatEncoder rebuilt from `ChatEncoder.portable()`: the same texts and tokens, without transformers
    (whose import is most of a tokenize worker's start-up)."""

    def __init__(self, parts: dict[str, Any]):  # no template, no transformers: no super().__init__
        from tokenizers import Tokenizer

        self.tok = None
        self.backend = Tokenizer.from_str(parts["backend"])
        self.system_prompt = None
        self.pad_id = parts["pad_id"]
        self.splice = Splice(**parts["splice"])
