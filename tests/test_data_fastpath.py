"""The data stage's fast path gives the same bytes as the plain one: spliced templates, lazy offsets, the
transformers-free worker encoder, and the flat-column packed table."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pytest

import real_tokenizers
from valley import schemas
from valley.data.chat import PROBES, ChatEncoder, PortableEncoder, Spans
from valley.data.packing import Doc, one_per_row, pack_best_fit, pack_table, packed_table
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


def _same_encodings(a: ChatEncoder, b: ChatEncoder, pairs: list[tuple[str, str]]) -> None:
    for x, y in zip(a.encode(pairs), b.encode(pairs), strict=True):
        assert (x.input_ids, x.loss_mask, x.prompt_chars, x.text) == (y.input_ids, y.loss_mask, y.prompt_chars, y.text)
        assert list(x.offsets) == list(y.offsets)


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
    _same_encodings(full, portable, _pairs())


def test_real_qwen25_splices_and_llama31_and_qwen3_render_per_trace(shared_data, tmp_path):
    qwen25 = ChatEncoder(str(real_tokenizers.qwen25_dir(shared_data, tmp_path / "q25")))
    assert qwen25.splice is not None
    _same_encodings(qwen25, PortableEncoder(qwen25.portable()), _pairs(20))
    for q, r in _pairs(20):
        assert qwen25.render(q, r) == qwen25.render_template(q, r)
    llama = ChatEncoder(str(real_tokenizers.llama31_dir(shared_data, tmp_path / "l31")), system_prompt="Be brief.")
    qwen3 = ChatEncoder(str(real_tokenizers.qwen3_dir(shared_data, tmp_path / "q3")))
    assert llama.splice is None and qwen3.splice is None  # trims / splits out the think block


def _docs(n: int, seed: int) -> list[Doc]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        length = rng.randint(1, 120)
        first = rng.randint(0, length)
        mask = [0] * first + [1] * (length - first)
        if i % 7 == 0:  # masks need not be one span (a caller may mask more)
            mask = [rng.randint(0, 1) for _ in range(length)]
        docs.append(Doc(f"d{i}", [rng.randrange(50_000) for _ in range(length)], mask))
    return docs


@pytest.mark.parametrize("n", [0, 1, 37, 400])
def test_packed_table_is_the_records_table(n):
    docs = _docs(n, seed=n)
    for packing, rows in (("pack", pack_best_fit(docs, 128, 7)), ("none", one_per_row(docs))):
        expected = pa.Table.from_pylist([r.as_record() for r in rows], schema=schemas.TOKENIZED)
        assert pack_table(docs, 128, 7, packing).equals(expected)


def test_packed_table_keeps_the_given_rows():
    docs = _docs(5, seed=1)
    table = packed_table(docs, [[3, 0], [4], [1, 2]], None, 0)
    assert table.column("trace_ids").to_pylist() == [["d3", "d0"], ["d4"], ["d1", "d2"]]
    assert table.column("position_ids").to_pylist()[0] == [*range(len(docs[3])), *range(len(docs[0]))]


def test_pack_table_refuses_a_document_longer_than_a_row():
    with pytest.raises(ValueError, match="longer than seq_len"):
        pack_table([Doc("x", [1] * 200, [1] * 200)], 128, 0, "pack")


def test_group_rows_follow_the_ids_order():
    table = pa.table({"id": ["a", "b", "c", "b"], "question": ["qa", "qb", "qc", "qb2"],
                      "response": ["ra", "rb", "rc", "rb2"]})
    rows = group_rows(table, ["c", "b"])
    assert rows == [{"id": "c", "question": "qc", "response": "rc"}, {"id": "b", "question": "qb2", "response": "rb2"}]
