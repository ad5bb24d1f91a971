"""The data stage's fast path gives the same bytes as the plain one: spliced templates, lazy offsets, the
transformers-free worker encoder (the packer's equivalence is in test_data_documents.py)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

import real_tokenizers
from fixtures import assert_same_encodings
from valley.data.chat import PROBES, ChatEncoder, PortableEncoder, Spans
from valley.data.tokenize import group_rows
from valley.demo import build_demo_tokenizer, make_traces

TRIMMING = ("{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim"
            " + '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
            "{%- endif %}")
SPLITTING = ("{%- for message in messages %}{%- set content = message['content'] %}"
             "{%- if '</think>' in content %}{%- set content = content.split('</think>')[-1] %}{%- endif %}"
             "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}{%- endfor %}"
             "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
JSON_QUOTING = ("{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' }}"
                "{{- message['content'] | tojson }}{{- '<|im_end|>\\n' }}{%- endfor %}"
                "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")


@pytest.fixture(scope="module")
def demo_tok(tmp_path_factory) -> str:
    return str(build_demo_tokenizer(tmp_path_factory.mktemp("tok") / "tok"))


def _with_template(demo_tok: str, tmp_path, template: str) -> str:
    """The demo tokenizer with another chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo_tok)
    tok.chat_template = template
    tok.save_pretrained(str(tmp_path / "tok"))
    return str(tmp_path / "tok")


def _pairs(n: int = 60) -> list[tuple[str, str]]:
    rows = make_traces(n, seed=5)
    pairs = [(r["question"], r["response"]) for r in rows]
    return pairs + [(f"  {q}\n", f"\n{r}  ") for q, r in pairs[:5]] + PROBES


@pytest.mark.parametrize("system_prompt", [None, "Be brief.", "  spaced \n"])
def test_splice_renders_as_the_template(demo_tok, system_prompt):
    enc = ChatEncoder(demo_tok, system_prompt)
    assert enc.splice is not None
    for q, r in _pairs():
        assert enc.render(q, r) == enc.render_template(q, r)


@pytest.mark.parametrize("template", [TRIMMING, SPLITTING, JSON_QUOTING])
def test_templates_that_change_the_content_are_rendered_per_trace(demo_tok, tmp_path, template):
    enc = ChatEncoder(_with_template(demo_tok, tmp_path, template))
    assert enc.splice is None and enc.portable() is None
    q, r = PROBES[1]
    assert enc.render(q, r) == enc.render_template(q, r)


def test_spans_are_the_encodings_offsets(demo_tok):
    enc = ChatEncoder(demo_tok)
    batch = enc.backend.encode_batch([enc.render(q, r)[0] for q, r in _pairs()], add_special_tokens=False)
    for e in batch:
        spans = Spans(e)
        assert list(spans) == [tuple(o) for o in e.offsets] and len(spans) == len(e.ids)
        assert spans[-1] == tuple(e.offsets[-1])
        with pytest.raises(IndexError):
            spans[len(spans)]


def test_portable_encoder_encodes_as_the_full_one(demo_tok):
    full = ChatEncoder(demo_tok, "Be brief.")
    portable = PortableEncoder(json.loads(json.dumps(full.portable())))  # as it travels to a worker
    assert portable.pad_id == full.pad_id
    assert_same_encodings(full, portable, _pairs())


def test_real_qwen25_splices_and_llama31_and_qwen3_render_per_trace(shared_data, tmp_path):
    qwen25 = ChatEncoder(str(real_tokenizers.qwen25_dir(shared_data, tmp_path / "q25")))
    assert qwen25.splice is not None
    assert_same_encodings(qwen25, PortableEncoder(qwen25.portable()), _pairs(20))
    for q, r in _pairs(20):
        assert qwen25.render(q, r) == qwen25.render_template(q, r)
    llama = ChatEncoder(str(real_tokenizers.llama31_dir(shared_data, tmp_path / "l31")), system_prompt="Be brief.")
    qwen3 = ChatEncoder(str(real_tokenizers.qwen3_dir(shared_data, tmp_path / "q3")))
    assert llama.splice is None and qwen3.splice is None  # trims / splits out the think block


def test_group_rows_follow_the_ids_order():
    table = pa.table({"id": ["a", "b", "c", "b"], "question": ["qa", "qb", "qc", "qb2"],
                      "response": ["ra", "rb", "rc", "rb2"]})
    rows = group_rows(table, ["c", "b"])
    assert rows == [{"id": "c", "question": "qc", "response": "rc"}, {"id": "b", "question": "qb2", "response": "rb2"}]
