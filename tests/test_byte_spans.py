"""Token spans summed from byte lengths equal the Rust encoder's tracked offsets, and the encoder that uses
them gives the same ids, masks and spans as the one that tracks offsets (byte_spans.py)."""

from __future__ import annotations

import json
import random
import tarfile

import pytest
from tokenizers import Tokenizer

import real_tokenizers
from fixtures import assert_same_encodings
from valley.data.byte_spans import CHECK_TEXTS, ByteLengths, byte_spans, token_byte_lengths
from valley.data.chat import PROBES, ChatEncoder, PortableEncoder
from valley.demo import build_demo_tokenizer, make_traces

R1_RESPONSES = "traces/think-with-feedback__codeforces-cots_r1_original_responses_1247.tar.gz"


@pytest.fixture(scope="module")
def demo_tok(tmp_path_factory) -> str:
    return str(build_demo_tokenizer(tmp_path_factory.mktemp("tok") / "tok"))


def _unicode_texts(n: int, seed: int = 0) -> list[str]:
    """Texts mixing ASCII, accented Latin, CJK, emoji and whitespace runs, so tokens split characters."""
    rng = random.Random(seed)
    alphabet = "abc xyz\n\t  ()[]{}<>=+-*/_.,:;'\"\\é ñ ü ß 日本語 中文 한국어 😀 🙂 ✓ → ∑ \u00a0\u200b"
    return [("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 300)))) for _ in range(n)]


def _assert_spans_match(backend: Tokenizer, lengths, texts: list[str]) -> None:
    for text in texts:
        enc = backend.encode(text, add_special_tokens=False)
        spans = lengths.spans(enc.ids, text)
        assert spans is not None, text
        assert list(spans) == [tuple(o) for o in enc.offsets], text
        assert spans.ends.tolist() == [end for _, end in enc.offsets]


def test_demo_tokenizer_spans_equal_tracked_offsets(demo_tok):
    backend = Tokenizer.from_file(f"{demo_tok}/tokenizer.json")
    lengths = token_byte_lengths(backend)
    assert lengths is not None
    rows = make_traces(50, seed=3)
    _assert_spans_match(backend, lengths, CHECK_TEXTS + _unicode_texts(200) + [r["response"] for r in rows]
                        + [q + r for q, r in PROBES])
    assert not lengths.nfc and len(byte_spans([], lengths.lengths, "")) == 0


def test_real_tokenizers_spans_equal_tracked_offsets_on_real_r1_traces(shared_data, tmp_path):
    with tarfile.open(shared_data / R1_RESPONSES) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith("response.md")),
                         key=lambda m: m.name)[:40]
        responses = [tar.extractfile(m).read().decode("utf-8") for m in members]
    for name, make in (("q25", real_tokenizers.qwen25_dir), ("l31", real_tokenizers.llama31_dir),
                       ("q3", real_tokenizers.qwen3_dir)):
        backend = Tokenizer.from_file(str(make(shared_data, tmp_path / name) / "tokenizer.json"))
        lengths = token_byte_lengths(backend)
        assert lengths is not None, name
        _assert_spans_match(backend, lengths, responses + _unicode_texts(100, seed=1)
                            + ["<|im_start|>assistant\n<think>\n", "<|start_header_id|>user<|end_header_id|>\n\nhi"])


def _modified(demo_tok: str, tmp_path, change) -> Tokenizer:
    spec = json.loads(Tokenizer.from_file(f"{demo_tok}/tokenizer.json").to_str())
    change(spec)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return Tokenizer.from_file(str(path))


@pytest.mark.parametrize("change", [
    lambda s: s.update(normalizer={"type": "NFKC"}),
    lambda s: s.update(post_processor={"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                                       "use_regex": True}),
    lambda s: s.update(pre_tokenizer={"type": "Whitespace"}),
    lambda s: s["added_tokens"].append({"id": len(s["model"]["vocab"]) + 50, "content": "<sp>", "single_word": False,
                                         "lstrip": True, "rstrip": False, "normalized": False, "special": True}),
], ids=["normalizer", "trimming-post-processor", "not-byte-level", "lstrip-added-token"])
def test_tokenizers_whose_tokens_may_not_spell_the_text_keep_tracked_offsets(demo_tok, tmp_path, change):
    assert token_byte_lengths(_modified(demo_tok, tmp_path, change)) is None


def _pairs(n: int = 60) -> list[tuple[str, str]]:
    rows = make_traces(n, seed=7)
    pairs = [(r["question"], r["response"]) for r in rows]
    texts = _unicode_texts(n, seed=2)
    return pairs + [(q + " 日本語", "<think>é 😀</think>\n" + t) for (q, _), t in zip(pairs, texts)] + list(PROBES)


def test_encoder_without_offsets_encodes_as_the_one_with_them(demo_tok):
    fast, tracked = ChatEncoder(demo_tok, "Be brief."), ChatEncoder(demo_tok, "Be brief.")
    tracked.byte_lengths = None  # the encoder's own offsets
    assert fast.byte_lengths is not None
    assert_same_encodings(fast, tracked, _pairs())
    portable = PortableEncoder(json.loads(json.dumps(fast.portable())))
    assert portable.byte_lengths is not None
    assert_same_encodings(portable, tracked, _pairs())


def test_a_document_whose_tokens_do_not_add_up_is_encoded_with_offsets(demo_tok):
    wrong, tracked = ChatEncoder(demo_tok), ChatEncoder(demo_tok)
    tracked.byte_lengths = None
    lengths = wrong.byte_lengths.lengths.copy()
    lengths[wrong.backend.token_to_id("<|im_end|>")] += 1  # every document's bytes now disagree
    wrong.byte_lengths = ByteLengths(lengths, nfc=False)
    assert_same_encodings(wrong, tracked, _pairs(10))


def test_nfc_tokenizer_encodes_text_not_in_nfc_with_offsets(shared_data, tmp_path):
    """Qwen's tokenizer NFC-normalizes: a decomposed é is two characters in the text and one in its tokens."""
    path = str(real_tokenizers.qwen25_dir(shared_data, tmp_path / "q25"))
    fast, tracked = ChatEncoder(path), ChatEncoder(path)
    tracked.byte_lengths = None
    assert fast.byte_lengths is not None and fast.byte_lengths.nfc
    decomposed = "cafe\u0301 <think>e\u0301</think> 日本語"
    assert fast.byte_lengths.spans(fast.backend.encode(decomposed, add_special_tokens=False).ids, decomposed) is None
    pairs = _pairs(20) + [("q e\u0301", decomposed), ("Ω \u2126", "<think>\u2126</think>")]
    assert_same_encodings(fast, tracked, pairs)
