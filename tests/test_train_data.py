"""Stand-in for the data stage's output (tokenized + packed demo traces) and the train stage's input checks.

`build_data_dir` writes what the data stage writes — `tokenized/<subset>/part-*.parquet` (schemas.TOKENIZED),
`tokenizer/`, `manifest.json`, `_SUCCESS` — from the demo traces, so train tests do not depend on the data
stage's progress. It also returns the unpacked documents for parity checks.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from valley import schemas
from valley.errors import ConfigError, InputError
from valley.storage import Storage


def tokenize_doc(tok, question: str, response: str) -> tuple[list[int], list[int]]:
    """Chat-templated ids and a loss mask that is 1 on the assistant turn only."""
    def ids(messages, gen):
        out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    user = [{"role": "user", "content": question}]
    prompt = ids(user, True)
    full = ids(user + [{"role": "assistant", "content": response}], False)
    assert full[: len(prompt)] == prompt
    return full, [0] * len(prompt) + [1] * (len(full) - len(prompt))


def pack(docs: list[dict], seq_len: int, pad_id: int) -> list[dict]:
    """First-fit in order (the data stage uses best-fit; any packing is valid input)."""
    rows: list[dict] = []
    for d in docs:
        n = len(d["input_ids"])
        row = next((r for r in rows if len(r["input_ids"]) + n <= seq_len), None)
        if row is None:
            row = {"input_ids": [], "loss_mask": [], "position_ids": [], "trace_ids": [], "n_tokens": 0}
            rows.append(row)
        row["input_ids"] += d["input_ids"]
        row["loss_mask"] += d["loss_mask"]
        row["position_ids"] += list(range(n))
        row["trace_ids"].append(d["id"])
        row["n_tokens"] += n
    for r in rows:
        pad = seq_len - len(r["input_ids"])
        r["input_ids"] += [pad_id] * pad
        r["loss_mask"] += [0] * pad
        r["position_ids"] += list(range(pad))
        r["n_docs"] = len(r["trace_ids"])
        r["n_loss_tokens"] = sum(r["loss_mask"])
    return rows


def statement(question: str) -> str:
    """The question's first paragraph: the whole LCB-format question (examples, format) is 120-200 tokens,
    so documents cut to a few hundred tokens would keep no response token to train on."""
    return question.split("\n\n")[0]


def tiny_model_and_docs(root: Path, max_tokens: int) -> tuple[Path, object, list[dict]]:
    """The tiny demo student, its tokenizer and nine tokenized demo documents cut to `max_tokens`."""
    from transformers import AutoTokenizer

    from valley.demo import build_demo_tokenizer, build_tiny_model, make_traces

    tok_dir = build_demo_tokenizer(root / "tok")
    model_dir = build_tiny_model(root / "model", tok_dir, hidden_size=32, num_layers=2)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    docs = []
    for t in make_traces(9, seed=3):
        ids, mask = tokenize_doc(tok, statement(t["question"]), t["response"])
        docs.append({"id": t["id"], "input_ids": ids[:max_tokens], "loss_mask": mask[:max_tokens]})
    return model_dir, tok, docs


def build_data_dir(storage: Storage, tokenizer_dir: Path, *, n_traces: int, seq_len: int, seed: int = 0,
                   name: str = "data/test-0", n_files: int = 2, packed: bool = True, max_doc: int | None = None
                   ) -> tuple[str, list[dict]]:
    """Docs are cut to `max_doc` tokens (default seq_len // 3) so that rows hold several documents."""
    from transformers import AutoTokenizer

    from valley.demo import make_traces

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    docs = []
    for t in make_traces(n_traces, seed):
        ids, mask = tokenize_doc(tok, statement(t["question"]), t["response"])
        cut = max_doc or seq_len // 3
        docs.append({"id": t["id"], "input_ids": ids[:cut], "loss_mask": mask[:cut]})
    if packed:
        rows = pack(docs, seq_len, tok.pad_token_id)
    else:
        rows = [{"input_ids": d["input_ids"], "loss_mask": d["loss_mask"], "position_ids": list(range(len(d["input_ids"]))),
                 "trace_ids": [d["id"]], "n_tokens": len(d["input_ids"]), "n_docs": 1,
                 "n_loss_tokens": sum(d["loss_mask"])} for d in docs]
    per = -(-len(rows) // n_files)
    for i in range(n_files):
        part = rows[i * per:(i + 1) * per]
        table = pa.Table.from_pylist(part, schema=schemas.TOKENIZED)
        storage.write_parquet(table, name, "tokenized", "all", f"part-{i:05d}.parquet", schema=schemas.TOKENIZED)
    for p in sorted(Path(tokenizer_dir).iterdir()):
        storage.write_bytes(p.read_bytes(), name, "tokenizer", p.name)
    storage.write_json({"seq_len": seq_len, "packing": "pack" if packed else "none",
                        "subsets": {"all": {"rows": len(rows), "docs": len(docs)}}}, name, "manifest.json")
    storage.mark_success(name, "test")
    return name, docs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from valley.demo import build_demo_tokenizer, build_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    tok = build_demo_tokenizer(root / "tok")
    model = build_tiny_model(root / "model", tok, hidden_size=32, num_layers=2)
    return tok, model


def rows_have_several_docs(storage: Storage, data: str) -> bool:
    rows = storage.read_parquet(data, "tokenized", "all")
    return min(rows.column("n_docs").to_pylist()) >= 2


def _cfg(data: str, model: str, **kw):
    from valley.train.config import TrainConfig

    base = dict(data=data, model=model, global_batch_size=4, micro_batch_size=1, num_workers=2, epochs=1,
                max_seq_len=256)
    return TrainConfig(**{**base, **kw})


def test_plan_counts_rows_and_steps(storage, tiny):
    from valley.train.plan import plan_run

    tok, model = tiny
    data, docs = build_data_dir(storage, tok, n_traces=30, seq_len=256)
    plan = plan_run(_cfg(data, str(model), epochs=3), storage, "train/x")
    assert rows_have_several_docs(storage, data)
    rows = storage.read_parquet(data, "tokenized", "all")
    assert plan.rows == rows.num_rows
    assert plan.steps_per_epoch == rows.num_rows // 4
    assert plan.total_steps == 3 * plan.steps_per_epoch
    assert plan.rows_left_over_per_epoch == rows.num_rows % 4
    assert plan.tokens == sum(len(d["input_ids"]) for d in docs)
    assert plan.accum == 2
    assert plan.max_seq_len == 256 and len(plan.files) == 2


def test_plan_is_frozen_and_travels_to_workers(storage, tiny):
    """Workers get the plan through Ray's pickling and cannot change what the other ranks see."""
    import dataclasses
    import pickle

    from valley.train.plan import plan_run

    tok, model = tiny
    data, _ = build_data_dir(storage, tok, n_traces=30, seq_len=256)
    plan = plan_run(_cfg(data, str(model)), storage, "train/x")
    assert pickle.loads(pickle.dumps(plan)) == plan
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.pad_id = 3  # type: ignore[misc]


def test_plan_takes_pad_id_and_seq_len_from_the_data_stage(storage, tiny, monkeypatch):
    from types import SimpleNamespace

    import transformers

    from valley.train.plan import plan_run

    tok, model = tiny
    data, _ = build_data_dir(storage, tok, n_traces=30, seq_len=256)
    manifest = storage.read_json(data, "manifest.json")
    storage.write_json({**manifest, "pad_id": 7, "pad_id_from": "eos_token_id"}, data, "manifest.json")
    plan = plan_run(_cfg(data, str(model), max_seq_len=None), storage, "train/x")
    assert plan.pad_id == 7 and plan.max_seq_len == 256
    # a manifest from before pad_id was recorded: the saved tokenizer's pad (here none, so its eos)
    storage.write_json(manifest, data, "manifest.json")
    seen = []

    def fake_tokenizer(path, **_):
        seen.append(path)
        return SimpleNamespace(pad_token_id=None, eos_token_id=5)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake_tokenizer)
    assert plan_run(_cfg(data, str(model)), storage, "train/x").pad_id == 5
    assert seen == [storage.path(data, "tokenizer")]

    def broken(path, **_):
        raise OSError("unreadable")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", broken)
    assert plan_run(_cfg(data, str(model)), storage, "train/x").pad_id == 0  # the trainer's padding before

def test_plan_rejects_bad_inputs(storage, tiny):
    from valley.train.plan import plan_run

    tok, model = tiny
    data, _ = build_data_dir(storage, tok, n_traces=40, seq_len=256)
    with pytest.raises(ConfigError, match="subset 'nope'"):
        plan_run(_cfg(data, str(model), subset="nope"), storage, "train/x")
    with pytest.raises(ConfigError, match="seq_len=256 > max_seq_len=128"):
        plan_run(_cfg(data, str(model), max_seq_len=128), storage, "train/x")
    with pytest.raises(ConfigError, match="fewer than one global batch"):
        plan_run(_cfg(data, str(model), global_batch_size=256), storage, "train/x")
    with pytest.raises(ConfigError, match="does not exist"):
        plan_run(_cfg(data, str(storage.path("nowhere"))), storage, "train/x")
    # a shard with a wrong column type names the file and the field
    bad = pa.table({"input_ids": pa.array([[1, 2]], pa.list_(pa.int32())), "loss_mask": pa.array([[0, 1]], pa.list_(pa.int8())),
                    "position_ids": pa.array([["a", "b"]]), "n_tokens": [2], "trace_ids": [["t"]]})
    storage.write_parquet(bad, data, "tokenized", "all", "part-99999.parquet")
    with pytest.raises(InputError, match=r"part-99999.parquet.*field 'position_ids'"):
        plan_run(_cfg(data, str(model)), storage, "train/x")
    storage.remove(data, "_SUCCESS")
    with pytest.raises(ConfigError, match="not finished"):
        plan_run(_cfg(data, str(model)), storage, "train/x")


def test_global_batch_must_divide():
    with pytest.raises(ConfigError, match="not a multiple"):
        _cfg("d", "m", global_batch_size=6, micro_batch_size=2, num_workers=2)
    cfg = _cfg("d", "m", global_batch_size=128, micro_batch_size=2, num_workers=8)
    assert cfg.grad_accum_steps() == 8
    from valley.train.config import TrainConfig

    paper = TrainConfig(data="d", model="m")
    assert (paper.global_batch_size, paper.learning_rate, paper.warmup_ratio, paper.epochs) == (128, 8e-5, 0.10, 5)
    assert paper.max_seq_len is None  # the data stage's seq_len


def test_job_configs_load_and_size_their_batches():
    from valley import config
    from valley.train.config import TrainConfig

    root = Path(__file__).resolve().parents[1] / "jobs" / "configs"
    accum = {p.name: config.load(TrainConfig, p).grad_accum_steps() for p in sorted(root.glob("train_*.yaml"))}
    assert accum["train_qwen7b.yaml"] == 16 and accum["train_llama8b.yaml"] == 8 and "train_demo.yaml" in accum
