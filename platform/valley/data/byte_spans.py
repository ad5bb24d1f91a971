"""Token ends from each token's byte length, for byte-level BPE tokenizers (Qwen2.5, Llama 3, SmolLM2).

The loss mask and the label audit need where tokens end in the text. The Rust encoder can track offsets,
but on long reasoning traces that tracking is 40% of its time (`bench_data.py`, real R1 traces). A
byte-level BPE token spells a fixed run of the text's UTF-8 bytes, so a token's end is the running sum of
the byte lengths before it: the same ids come from `encode_batch_fast` (no offsets), and the ends from one
numpy cumulative sum.

Only tokenizers where that holds exactly take this path; `token_byte_lengths` returns None for a normalizer
other than NFC, byte fallback, added tokens that swallow neighbouring spaces, or a post-processor that trims
offsets, and for any tokenizer whose summed spans differ from its tracked offsets on the probe texts. Each
document is checked too: its tokens' bytes must add up to its text's (and, under NFC, its text must be NFC
already), or it is encoded again with offsets.
"""

from __future__ import annotations

import bisect
import json
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Texts on which the summed ends must equal the tracked offsets before a tokenizer takes this path:
# multi-byte characters split across tokens, whitespace runs, think tags, code, control-token spellings.
CHECK_TEXTS = [
    "<think>\nLet me think. héllo ✓ 日本語 😀😀 naïve\r\n\n\n  </think>\n\n```python\nprint('x')\n```",
    "  leading and trailing  \t\n", "🙂", "\u00a0\u2028 mixed\u200b zero-width", "a" * 300 + "💡" * 7,
]


def _byte_symbols() -> dict[str, int]:
    """The printable character a byte-level BPE vocabulary uses for each byte value (GPT-2's convention):
    printable Latin-1 bytes stand for themselves, every other byte for the next code point from 256 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            symbols[chr(256 + extra)] = b
            extra += 1
    return symbols


def _has_byte_level(node: dict[str, Any] | None) -> bool:
    if node is None:
        return False
    if node.get("type") == "Sequence":
        return any(_has_byte_level(n) for n in node.get("pretokenizers", []))
    return node.get("type") == "ByteLevel"


def _keeps_offsets(node: dict[str, Any] | None) -> bool:
    """A post-processor that leaves the model's token offsets as they are (none that trims spaces off)."""
    if node is None or node.get("type") == "TemplateProcessing":
        return True
    if node.get("type") == "Sequence":
        return all(_keeps_offsets(n) for n in node.get("processors", []))
    return node.get("type") == "ByteLevel" and not node.get("trim_offsets", True)


def _normalization(node: dict[str, Any] | None) -> str | None:
    """"none" or "nfc" for the normalizers this path allows (NFC leaves NFC text as it is); None for others."""
    if node is None:
        return "none"
    if node.get("type") == "Sequence":
        kinds = {_normalization(n) for n in node.get("normalizers", [])}
        return None if None in kinds else "nfc" if "nfc" in kinds else "none"
    return "nfc" if node.get("type") == "NFC" else None


@dataclass(frozen=True)
class ByteLengths:
    """Bytes each token id spells, for a tokenizer whose tokens spell the text's UTF-8 bytes."""

    lengths: np.ndarray
    nfc: bool  # the tokenizer NFC-normalizes: a text not in NFC already needs the tracked offsets

    def spans(self, ids: Sequence[int] | np.ndarray, text: str) -> ByteSpans | None:
        if self.nfc and not text.isascii() and not unicodedata.is_normalized("NFC", text):
            return None
        return byte_spans(ids, self.lengths, text)


def token_byte_lengths(backend: Any) -> ByteLengths | None:
    """Bytes each token id spells in the text, from a `tokenizers.Tokenizer`; None when the tokenizer is
    not a plain byte-level BPE (its ends then need the encoder's offsets)."""
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    normalization = _normalization(spec.get("normalizer"))
    if (normalization is None or model.get("type") != "BPE" or model.get("byte_fallback")
            or not _has_byte_level(spec.get("pre_tokenizer")) or not _keeps_offsets(spec.get("post_processor"))):
        return None
    added = spec.get("added_tokens") or []
    if any(t.get("lstrip") or t.get("rstrip") or t.get("single_word") for t in added):
        return None
    symbols = _byte_symbols()
    added_text = {t["content"] for t in added}
    vocab = backend.get_vocab(with_added_tokens=True)
    lengths = np.zeros(max(vocab.values()) + 1, np.int64)
    for token, i in vocab.items():
        if token in added_text:
            lengths[i] = len(token.encode("utf-8"))
        elif all(c in symbols for c in token):
            lengths[i] = len(token)
        else:
            return None
    if not (lengths[list(vocab.values())] > 0).all():
        return None
    found = ByteLengths(lengths, normalization == "nfc")
    return found if _agrees_with_offsets(backend, found) else None


def _agrees_with_offsets(backend: Any, found: ByteLengths) -> bool:
    for text in CHECK_TEXTS:
        enc = backend.encode(text, add_special_tokens=False)
        spans = found.spans(enc.ids, text)
        if spans is None or list(spans) != [tuple(o) for o in enc.offsets]:
            return False
    return True


def byte_spans(ids: Sequence[int] | np.ndarray, lengths: np.ndarray, text: str) -> ByteSpans | None:
    """The tokens' character spans in `text` from their byte lengths; None when the tokens do not spell
    the text's bytes (the caller then encodes with offsets)."""
    byte_ends = np.cumsum(lengths[ids if isinstance(ids, np.ndarray) else np.asarray(ids, np.int64)])
    raw = text.encode("utf-8")
    if (byte_ends[-1] if len(byte_ends) else 0) != len(raw):
        return None
    if len(raw) == len(text):  # ASCII: a byte is a character
        return ByteSpans(byte_ends, None)
    return ByteSpans(byte_ends, np.cumsum((np.frombuffer(raw, np.uint8) & 0xC0) != 0x80))


class ByteSpans(Sequence):
    """Tokens' (start, end) characters as the encoder's offsets give them: a token starts at the character
    holding its first byte and ends after the character holding its last."""

    def __init__(self, byte_ends: np.ndarray, chars_through: np.ndarray | None):
        self.byte_ends = byte_ends
        self.chars_through = chars_through  # characters begun up to each byte (None: ASCII text)
        self.ends = byte_ends if chars_through is None else chars_through[byte_ends - 1]

    def __len__(self) -> int:
        return len(self.byte_ends)

    def __getitem__(self, i: int) -> tuple[int, int]:  # type: ignore[override]
        n = len(self.byte_ends)
        if not -n <= i < n:
            raise IndexError(i)
        i %= n
        first_byte = int(self.byte_ends[i - 1]) if i else 0
        start = first_byte if self.chars_through is None else int(self.chars_through[first_byte]) - 1
        return (start, int(self.ends[i]))


def tokens_ending_by(spans: Sequence[tuple[int, int]], chars: int, hi: int | None = None) -> int:
    """How many of the first `hi` tokens (all by default) end at or before character `chars`: the index of
    the first token past it. One numpy search on summed ends; a bisect over any other spans."""
    if isinstance(spans, ByteSpans):
        return int(np.searchsorted(spans.ends[:hi], chars, side="right"))
    return bisect.bisect_right(spans, chars, hi=len(spans) if hi is None else hi, key=_end)


def _end(span: tuple[int, int]) -> int:
    return span[1]
