"""The label audit: end of turn inside the loss, truncation, think/fence shares, token counts; the data
stage writes it per subset, refuses a subset whose end-of-turn tokens are not trained, warns on truncation."""

from __future__ import annotations

import json
import logging
import tarfile
from pathlib import Path

import pytest
from transformers import AutoTokenizer

import real_tokenizers
from valley.data.audit import DocFacts, doc_facts, percentiles, subset_audit, tally
from valley.data.chat import ChatEncoder, load_tokenizer
from valley.data.config import DataConfig, SubsetSpec
from valley.data.documents import Policy, document_table, group_outcome
from valley.data.eot import end_of_turn
from valley.data.stage import run_data
from valley.data.tokenize import DocumentPacker
from valley.demo import build_demo_tokenizer, make_traces
from valley.demo.model import CHATML_TEMPLATE
from valley.errors import ConfigError, InputError
from valley.manifest import Manifest, SubsetAudit, audit_rows, read_audit
from valley.storage import SUCCESS, Storage

# ---- per-document facts ------------------------------------------------------------------------


def _encoding(pieces: list[tuple[str, int]]) -> tuple[list[int], list[tuple[int, int]], str]:
    """ids, character offsets and text of a document given as (text, id) tokens."""
    ids, offsets, text = [], [], ""
    for piece, token in pieces:
        ids.append(token)
        offsets.append((len(text), len(text) + len(piece)))
        text += piece
    return ids, offsets, text


EOT = 9
DOC = [("<u>q", 1), ("<think>", 2), ("ab", 3), ("</think>", 4), ("\n\n```", 5), ("x", 6), ("```", 7), ("E", EOT),
       ("\n", 10)]


def test_doc_facts_of_a_whole_document():
    ids, offsets, text = _encoding(DOC)
    mask = [0] + [1] * 8
    facts = doc_facts("t", ids, mask, offsets, text, 4, len(ids), EOT)
    assert facts == DocFacts("t", 9, cut=False, trained=True, eot_in_loss=True, closed_think=True,
                             fenced_after_think=True, tokens=9, loss_tokens=8, think_tokens=3)


def test_doc_facts_see_an_end_of_turn_outside_the_loss_or_missing():
    ids, offsets, text = _encoding(DOC)
    pad_masked = [0] + [1] * 6 + [0, 1]  # the end-of-turn token masked out, as by labels[ids == pad] = -100
    assert doc_facts("t", ids, pad_masked, offsets, text, 4, len(ids), EOT).eot_in_loss is False
    ids, offsets, text = _encoding(DOC[:7] + [("\n", 10)])  # a template that writes no end of turn
    assert doc_facts("t", ids, [0] + [1] * 7, offsets, text, 4, len(ids), EOT).eot_in_loss is False
    ids, offsets, text = _encoding([("E", EOT), *DOC[1:]])  # an eot in the prompt is not the reply's
    assert doc_facts("t", ids, [0] * 7 + [0, 1], offsets, text, 1, len(ids), EOT).eot_in_loss is False


def test_doc_facts_of_a_truncated_document():
    ids, offsets, text = _encoding(DOC)
    facts = doc_facts("t", ids, [0] + [1] * 8, offsets, text, 4, 3, EOT)
    assert facts == DocFacts("t", 9, cut=True, trained=True, eot_in_loss=None, closed_think=False,
                             fenced_after_think=False, tokens=3, loss_tokens=2, think_tokens=2)


# ---- tallies, the subset audit, its verdicts ------------------------------------------------------


def _facts(i: int, **kw) -> DocFacts:
    base = dict(trace_id=f"t{i}", n_tokens=100 + i, cut=False, trained=True, eot_in_loss=True, closed_think=True,
                fenced_after_think=True, tokens=100 + i, loss_tokens=80, think_tokens=50)
    return DocFacts(**{**base, **kw})


def _audit(groups: list[list[DocFacts]], pad_id: int = 0) -> SubsetAudit:
    return subset_audit("s", [tally(g) for g in groups], eot_id=EOT, eot_token="<|im_end|>", pad_id=pad_id,
                        max_seq_len=1000, overlength="truncate")


def test_subset_audit_arithmetic():
    one = [_facts(i) for i in range(6)] + [_facts(6, eot_in_loss=False), _facts(7, closed_think=False,
                                                                                  fenced_after_think=False)]
    two = [_facts(8, cut=True, eot_in_loss=None, fenced_after_think=False), _facts(9, cut=True, trained=False,
                                                                                 eot_in_loss=None),
           _facts(10, eot_in_loss=False)]
    audit = _audit([one, two])
    assert (audit.traces, audit.documents, audit.eot_checked, audit.eot_in_loss) == (11, 10, 9, 7)
    assert audit.eot_missing_ids == ["t6", "t10"] and audit.eot_missing == 2
    assert (audit.truncated, audit.truncated_share, audit.truncated_ids) == (2, round(2 / 11, 6), ["t8", "t9"])
    assert (audit.closed_think_share, audit.fenced_after_think_share) == (0.9, 0.8)
    tokens = sum(100 + i for i in range(11) if i != 9)
    assert (audit.tokens, audit.loss_tokens, audit.think_tokens) == (tokens, 800, 500)
    assert audit.loss_tokens_share == round(800 / tokens, 6) and audit.think_tokens_share == round(500 / tokens, 6)
    assert audit.length_percentiles == {"p50": 105, "p90": 109, "p99": 110, "max": 110}
    assert audit.headline()["eot_in_loss"] == 7
    assert SubsetAudit.model_validate_json(audit.model_dump_json()) == audit


def test_percentiles_are_nearest_rank():
    assert percentiles(list(range(100, 0, -1))) == {"p50": 50, "p90": 90, "p99": 99, "max": 100}
    assert percentiles([7]) == {"p50": 7, "p90": 7, "p99": 7, "max": 7}
    assert percentiles([]) == {}


def test_refusal_names_subset_count_examples_and_cause():
    clean = _audit([[_facts(i) for i in range(3)]])
    assert clean.refusal() is None
    failing = [_facts(i, eot_in_loss=i % 2 == 0) for i in range(20)]
    text = _audit([failing], pad_id=EOT).refusal()
    assert "subset 's'" in text and "10 of 20 documents" in text and "'<|im_end|>'" in text
    assert "['t1', 't3', 't5', 't7', 't9']" in text and "pad = eos and the mask drops it" in text
    assert "pad = eos" not in _audit([failing], pad_id=0).refusal()


def test_truncation_share_warns_above_the_limit():
    audit = _audit([[_facts(0, cut=True, eot_in_loss=None), *[_facts(i) for i in range(1, 10)]]])
    assert audit.truncated_share == 0.1
    assert audit.warnings(0.1) == [] and audit.warnings(1.0) == []
    [warning] = audit.warnings(0.05)
    assert "subset 's': 1 of 10 traces (10.0%)" in warning and "max_seq_len=1000" in warning and "['t0']" in warning


def test_audit_rows_for_the_report():
    rows = dict(audit_rows(_audit([[_facts(i) for i in range(4)]])))
    assert rows["end of turn in loss"] == "4/4 (<|im_end|>)" and rows["pad = end of turn"] == "no"
    assert rows["traces cut by max_seq_len"] == "0.0% (0/4 over 1,000, truncate)"
    assert rows["closed <think>"] == "100.0%" and rows["trace tokens p50 / p90 / p99 / max"] == "101 / 103 / 103 / 103"


# ---- the end-of-turn token, from the template -------------------------------------------------


@pytest.fixture(scope="module")
def demo_tok(tmp_path_factory) -> Path:
    return build_demo_tokenizer(tmp_path_factory.mktemp("tok") / "demo")


@pytest.fixture(scope="module")
def pad_is_eos_tok(demo_tok, tmp_path_factory) -> Path:
    """A SmolLM2-shaped tokenizer: ChatML, and `<|im_end|>` is end of turn, eos and pad at once."""
    tok = AutoTokenizer.from_pretrained(str(demo_tok))
    tok.pad_token = tok.eos_token
    out = tmp_path_factory.mktemp("tok") / "pad_is_eos"
    tok.save_pretrained(str(out))
    return out


def test_end_of_turn_comes_from_the_template(demo_tok, pad_is_eos_tok):
    tok = load_tokenizer(str(demo_tok))
    assert end_of_turn(tok, "demo") == (tok.convert_tokens_to_ids("<|im_end|>"), "<|im_end|>")
    smol = load_tokenizer(str(pad_is_eos_tok))
    assert end_of_turn(smol, "smol")[0] == smol.pad_token_id == smol.eos_token_id
    tok.chat_template = CHATML_TEMPLATE.replace("'<|im_end|>\\n'", "'\\n'")
    with pytest.raises(ConfigError, match="at no-eot writes no special token after an assistant reply"):
        end_of_turn(tok, "no-eot")


def test_end_of_turn_of_real_tokenizers(shared_data, tmp_path):
    qwen25 = load_tokenizer(str(real_tokenizers.qwen25_dir(shared_data, tmp_path / "q25")))
    qwen3 = load_tokenizer(str(real_tokenizers.qwen3_dir(shared_data, tmp_path / "q3")))
    llama = load_tokenizer(str(real_tokenizers.llama31_dir(shared_data, tmp_path / "l31")))
    assert end_of_turn(qwen25, "q25") == end_of_turn(qwen3, "q3") == (151645, "<|im_end|>")
    assert end_of_turn(llama, "l31") == (128009, "<|eot_id|>")


# ---- the data stage ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """80 demo traces: 10 without a think block, 10 whose answer is not fenced."""
    rows = make_traces(80, seed=5)
    for row in rows[:10]:
        row["response"] = row["response"].split("</think>", 1)[1].lstrip()
    for row in rows[10:20]:
        row["response"] = row["response"].replace("```", "")
    path = tmp_path_factory.mktemp("corpus") / "traces.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(corpus: Path, tok: Path, **kw) -> DataConfig:
    base = dict(name="audit", inputs=[str(corpus)], tokenizer=str(tok), max_seq_len=1024, chunk_rows=40, group_docs=30,
                subsets=[SubsetSpec(name="all", kind="all")])
    return DataConfig(**{**base, **kw})


def test_stage_writes_the_audit_with_expected_shares(ray_local, corpus, demo_tok, tmp_path):
    storage = Storage(str(tmp_path / "s"))
    result = run_data(_cfg(corpus, demo_tok), storage)
    audit = read_audit(storage, result.stage_dir, "all")
    assert (audit.traces, audit.documents, audit.eot_checked, audit.eot_in_loss) == (80, 80, 80, 80)
    assert audit.eot_token == "<|im_end|>" and audit.pad_id != audit.eot_id
    assert (audit.closed_think, audit.fenced_after_think, audit.truncated) == (70, 60, 0)
    assert (audit.closed_think_share, audit.fenced_after_think_share) == (0.875, 0.75)
    summary = Manifest.read(storage, result.stage_dir).subset("all", result.stage_dir)
    assert (audit.tokens, audit.loss_tokens) == (summary.tokens, summary.loss_tokens)
    assert 0 < audit.think_tokens < audit.loss_tokens < audit.tokens
    assert audit.length_percentiles["max"] <= 1024 and summary.audit == audit.headline() == result.subsets["all"]["audit"]
    assert result.warnings == []
    assert read_audit(storage, result.stage_dir, "missing") is None  # as for a run written before audits

    # a group finished before audits existed (its stats sidecar has no tally) is redone, to the same bytes
    sub = Path(storage.path(result.stage_dir, "tokenized", "all"))
    sidecar = sub / "_stats" / "part-00000.json"
    stats = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({k: v for k, v in stats.items() if k != "audit"}))
    before = (sub / "part-00000.parquet").read_bytes()
    storage.remove(result.stage_dir, SUCCESS)
    again = run_data(_cfg(corpus, demo_tok), storage)
    assert not again.skipped and json.loads(sidecar.read_text()) == stats
    assert (sub / "part-00000.parquet").read_bytes() == before
    assert read_audit(storage, result.stage_dir, "all") == audit


class PadMaskingEncoder(ChatEncoder):
    """The mask step run through a documented mistake: after building the assistant mask, mask every token
    equal to the pad id, as a collator does when it sets labels = -100 where input_ids == pad_token_id
    (transformers' DataCollatorForLanguageModeling, and many hand-written SFT loops). With pad = eos =
    end of turn (SmolLM2, or any tokenizer whose missing pad was set to eos) that drops every end-of-turn
    token from the loss, and the student never learns to stop."""

    def iter_encode(self, pairs):
        for enc in super().iter_encode(pairs):
            enc.loss_mask = [0 if t == self.pad_id else m for t, m in zip(enc.input_ids, enc.loss_mask)]
            yield enc


def _documents_in_process(plan, encoder, cfg, storage, out_dir, eot_id):
    """run_documents without Ray, with the pad-masking mistake in the mask step."""
    packer = DocumentPacker(cfg.model_dump_json(), storage.root, out_dir, eot_id)
    packer._encoder = PadMaskingEncoder(cfg.tokenizer, cfg.system_prompt)
    docs = [packer.documents(g, plan.packed_with(g.group)) for g in plan.documents]
    packs = [s for d in docs for s in d.pop("packs")]
    return docs, packs + [packer.pack(p) for p in plan.packs if not p.with_documents]


def _audit_tally(encoder, rows, cfg, eot_id):
    """The label audit's tally of rows, encoded and put through the over-length policy as the stage does."""
    encoded = encoder.iter_encode([(r["question"], r["response"]) for r in rows])
    docs = document_table([r["id"] for r in rows], encoded, Policy(cfg.max_seq_len, cfg.overlength, eot_id))
    return group_outcome(docs, cfg.max_seq_len).audit


def test_audit_refuses_a_pad_is_eos_subset_whose_mask_drops_the_end_of_turn(ray_local, corpus, pad_is_eos_tok,
                                                                            tmp_path, monkeypatch):
    import valley.data.stage as stage

    cfg = _cfg(corpus, pad_is_eos_tok, subsets=[SubsetSpec(name="r40", kind="random", size=40)])
    good = Storage(str(tmp_path / "good"))
    result = run_data(cfg, good)  # the stage's own mask keeps the end of turn even when pad = eos
    audit = read_audit(good, result.stage_dir, "r40")
    assert audit.pad_id == audit.eot_id and audit.eot_in_loss == audit.eot_checked == 40

    monkeypatch.setattr(stage, "run_documents", _documents_in_process)
    bad = Storage(str(tmp_path / "bad"))
    with pytest.raises(InputError) as err:
        run_data(cfg, bad)
    message = str(err.value)
    assert "subset 'r40': 40 of 40 documents leave the end-of-turn token '<|im_end|>'" in message
    assert "pad = eos and the mask drops it" in message and "field 'loss_mask'" in message
    refused = read_audit(bad, result.stage_dir, "r40")
    assert refused.eot_in_loss == 0 and len(refused.eot_missing_ids) == 5
    assert all(f"'{t}'" in message for t in refused.eot_missing_ids) and "audit/r40.json" in message
    assert not bad.exists(result.stage_dir, SUCCESS) and not bad.exists(result.stage_dir, "manifest.json")


def test_truncation_above_the_limit_warns_and_does_not_change_the_hash(ray_local, corpus, demo_tok, tmp_path, caplog):
    cfg = _cfg(corpus, demo_tok, max_seq_len=400, overlength="truncate", max_truncated_share=0.05)
    assert cfg.config_hash() == cfg.model_copy(update={"max_truncated_share": 0.5}).config_hash()
    enc = ChatEncoder(str(demo_tok))
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    longer = sum(len(e.input_ids) > 400 for e in enc.encode([(r["question"], r["response"]) for r in rows]))
    assert 0.05 * 80 < longer < 80
    storage = Storage(str(tmp_path / "s"))
    with caplog.at_level(logging.WARNING, logger="valley.data.stage"):
        result = run_data(cfg, storage)
    audit = read_audit(storage, result.stage_dir, "all")
    assert (audit.truncated, audit.eot_checked, audit.eot_in_loss) == (longer, 80 - longer, 80 - longer)
    assert audit.truncated == result.subsets["all"]["truncated"] and audit.length_percentiles["max"] > 400
    [warning] = result.warnings
    assert f"{longer} of 80 traces" in warning and "were truncated" in warning and warning in caplog.text


R1_TRACES = "traces/think-with-feedback__r1_traces_with_prompts_10.tar.gz"


def test_real_r1_traces_with_real_tokenizers(shared_data, tmp_path):
    """Ten real R1 traces under Qwen3's own template and Llama 3.1's: every end of turn trained, every think
    block closed and followed by a fenced answer; a Qwen tokenizer with pad set to eos (the usual fix for a
    missing pad) passes with the stage's mask and is refused through the pad-masking mistake."""
    archive = shared_data / R1_TRACES
    if not archive.exists():
        pytest.skip(f"{archive} not found")
    with tarfile.open(archive) as tar:
        files = {m.name: tar.extractfile(m).read().decode("utf-8") for m in tar.getmembers() if m.isfile()}
    rows = [{"id": name.split("/")[-2], "question": files[name.replace("response.md", "prompt.md")], "response": text}
            for name, text in sorted(files.items()) if name.endswith("response.md")]
    qwen_eos_pad = tmp_path / "q3-pad-eos"
    tok = AutoTokenizer.from_pretrained(str(real_tokenizers.qwen3_dir(shared_data, tmp_path / "q3")))
    tok.pad_token = tok.eos_token
    tok.save_pretrained(str(qwen_eos_pad))
    for tok_dir in (tmp_path / "q3", real_tokenizers.llama31_dir(shared_data, tmp_path / "l31"), qwen_eos_pad):
        encoder = ChatEncoder(str(tok_dir))
        eot_id, eot_token = end_of_turn(encoder.tok, str(tok_dir))
        cfg = DataConfig(name="r1", inputs=[str(archive)], tokenizer=str(tok_dir), max_seq_len=32768)
        audit = subset_audit("r1", [_audit_tally(encoder, rows, cfg, eot_id)], eot_id=eot_id,
                             eot_token=eot_token, pad_id=encoder.pad_id, max_seq_len=32768, overlength="drop")
        assert (audit.documents, audit.eot_in_loss, audit.closed_think, audit.fenced_after_think) == (10, 10, 10, 10)
        assert audit.refusal() is None and 0.5 < audit.think_tokens_share < audit.loss_tokens_share < 1
        assert audit.length_percentiles["p50"] > 1000 and audit.truncated == 0
    assert encoder.pad_id == eot_id
    bad = PadMaskingEncoder(str(qwen_eos_pad))
    audit = subset_audit("r1", [_audit_tally(bad, rows, cfg, eot_id)], eot_id=eot_id, eot_token=eot_token,
                         pad_id=bad.pad_id, max_seq_len=32768, overlength="drop")
    assert audit.eot_in_loss == 0 and "pad = eos and the mask drops it" in audit.refusal()
