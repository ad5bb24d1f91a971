"""`batch_unit` and `last_step`: the step arithmetic (pure), the examples unit's schedule (every document
once per epoch, ceil or floor steps), its document reading, and real `valley train` runs whose loss per step
equals a plain single-process torch loop over the same documents unpacked (one per forward)."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from fixtures import build_data_dir, unpacked_loss
from valley.errors import ConfigError
from valley.train.config import TrainConfig
from valley.train.example_steps import epoch_groups, epoch_layouts, layout_step, pack_lengths
from valley.train.step_arithmetic import example_steps, row_steps, step_counts

# ---------------------------------------------------------------- step arithmetic (pure)


def test_example_steps_ceil_with_partial_floor_with_drop():
    part = example_steps(1000, 128, "partial")
    assert (part.steps_per_epoch, part.last_step_units, part.left_over) == (8, 1000 - 7 * 128, 0)
    assert part.trained == 1000 and part.mean_per_step() == 125.0
    drop = example_steps(1000, 128, "drop")
    assert (drop.steps_per_epoch, drop.last_step_units, drop.left_over) == (7, 0, 104)
    exact = example_steps(1024, 128, "partial")
    assert (exact.steps_per_epoch, exact.last_step_units) == (8, 0)
    assert example_steps(100, 128, "drop").steps_per_epoch == 0
    assert example_steps(100, 128, "partial").steps_per_epoch == 1
    for n in range(1, 300):
        assert example_steps(n, 16, "partial").steps_per_epoch == math.ceil(n / 16)
        assert example_steps(n, 16, "drop").steps_per_epoch == n // 16


def test_row_steps_follow_the_equal_split_over_workers():
    # today's arithmetic: each worker's equal share, whole micro-batches, whole steps
    drop = row_steps(189, 128, 1, 8, "drop")
    assert (drop.steps_per_epoch, drop.left_over, drop.last_step_units) == (1, 189 - 128, 0)
    part = row_steps(189, 128, 1, 8, "partial")
    # 23 rows per worker: one step of 16 each, then one of 7 each; 189 - 184 = 5 wait for the next epoch
    assert (part.steps_per_epoch, part.last_step_units, part.left_over) == (2, 56, 5)
    assert row_steps(10, 4, 1, 1, "partial").steps_per_epoch == 3
    assert row_steps(10, 4, 2, 2, "drop").steps_per_epoch == 2  # 5 rows a worker: 2 micro-batches of 2, accum 1
    assert row_steps(10, 4, 2, 2, "partial").steps_per_epoch == 3  # then one micro-batch of 1 row each
    assert part.per_step_of(189 * 10) == pytest.approx(184 * 10 / 2)


def test_step_counts_dispatch_on_the_unit():
    sizes = dict(global_batch=4, micro=1, world=2)
    assert step_counts("examples", "partial", rows=3, examples=41, **sizes).steps_per_epoch == 11
    assert step_counts("rows", "drop", rows=41, examples=3, **sizes).steps_per_epoch == 10


def test_config_defaults_and_hashes():
    base = dict(data="d", model="m", global_batch_size=6, micro_batch_size=2, num_workers=2)
    with pytest.raises(ConfigError, match="not a multiple"):
        TrainConfig(**base)  # rows: 6 is not micro × workers × accum
    cfg = TrainConfig(**base, batch_unit="examples")  # examples: any global batch
    assert (cfg.resolved_batch_unit(), cfg.resolved_last_step()) == ("examples", "partial")
    with pytest.raises(ConfigError, match="sized per step"):
        cfg.grad_accum_steps()
    rows = TrainConfig(data="d", model="m")
    assert (rows.resolved_batch_unit(), rows.resolved_last_step()) == ("rows", "drop")
    # None hashes as before the fields existed; setting them (even to the default behaviour) is a new hash
    explicit = rows.model_copy(update={"batch_unit": "rows", "last_step": "drop"})
    assert "batch_unit" not in json.dumps(rows.model_dump(exclude=rows.hash_exclude_if_none))
    assert explicit.config_hash() != rows.config_hash()
    assert rows.model_copy(update={"last_step": "partial"}).config_hash() != rows.config_hash()


def test_ds_config_of_the_examples_unit_states_one_micro_batch_per_step():
    from valley.train.deepspeed_config import build_ds_config

    ds = build_ds_config(TrainConfig(data="d", model="m", global_batch_size=100, micro_batch_size=2, num_workers=4,
                                     batch_unit="examples"), 4)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) \
        == (8, 2, 1)


# ---------------------------------------------------------------- the examples unit's schedule (pure)


def test_every_document_once_per_epoch_in_ceil_steps():
    n, per_step = 103, 10
    lengths = [int(x) for x in np.random.default_rng(0).integers(20, 400, n)]
    for epoch in range(3):
        groups = epoch_groups(n, per_step, "partial", seed=7, epoch=epoch, shuffle=True)
        assert len(groups) == math.ceil(n / per_step) and [len(g) for g in groups][-1] == 3
        assert sorted(int(d) for g in groups for d in g) == list(range(n))
        layouts = epoch_layouts(lengths, per_step, "partial", seed=7, epoch=epoch, shuffle=True, row_len=512,
                                packed=True, world=3, micro=1)
        for g, lay in zip(groups, layouts, strict=True):
            assert sorted(lay.docs) == sorted(int(d) for d in g)
            assert all(sum(lengths[d] for d in row) <= 512 for row in lay.rows)
            by_rank = [lay.rows_of(r) for r in range(3)]
            assert sorted(d for rows in by_rank for row in rows for d in row) == sorted(lay.docs)
            assert lay.micro_batches == max(len(rows) for rows in by_rank)
    dropped = epoch_groups(n, per_step, "drop", seed=7, epoch=0, shuffle=True)
    assert len(dropped) == n // per_step and all(len(g) == per_step for g in dropped)
    # seeded: a restarted run plans the same epoch again; another epoch is another order
    again = epoch_groups(n, per_step, "partial", seed=7, epoch=1, shuffle=True)
    assert all((a == b).all() for a, b in zip(again, epoch_groups(n, per_step, "partial", seed=7, epoch=1,
                                                                   shuffle=True), strict=True))
    assert not (again[0] == epoch_groups(n, per_step, "partial", seed=7, epoch=2, shuffle=True)[0]).all()
    assert list(epoch_groups(5, 2, "partial", seed=0, epoch=3, shuffle=False)[0]) == [0, 1]


def test_pack_lengths_is_best_fit_decreasing():
    assert pack_lengths([300, 200, 250, 100, 60], 512) == [[0, 1], [2, 3, 4]]
    with pytest.raises(ValueError, match="longer than a row of 512"):
        pack_lengths([600], 512)
    unpacked = layout_step([4, 2], [10, 11, 12, 13, 14], row_len=512, packed=False, world=2, micro=2)
    assert unpacked.rows == ((4,), (2,)) and unpacked.width == 14 and unpacked.micro_batches == 1


def test_micro_batches_from_documents_pad_to_the_step_shape():
    from valley.train.batches import Document, from_documents

    a = Document("a", np.array([5, 6, 7]), np.array([0, 1, 1]))
    b = Document("b", np.array([8, 9]), np.array([0, 1]))
    mb = from_documents([[a, b], []], width=6, pad_id=1)
    assert mb.input_ids.tolist() == [[5, 6, 7, 8, 9, 1], [1] * 6]
    assert mb.loss_mask.tolist() == [[0, 1, 1, 0, 1, 0], [0] * 6]
    assert mb.position_ids.tolist() == [[0, 1, 2, 0, 1, 0], list(range(6))]
    assert mb.row_tokens == [5, 0] and mb.trace_ids == ["a", "b"]


# ---------------------------------------------------------------- planning and reading documents


def _shard_trace_order(plan) -> list[str]:
    """Trace ids in the order the plan indexes documents: shard by shard, row by row."""
    from valley.storage import Storage

    out = []
    for uri in plan.files:
        st = Storage(uri, create=False)
        for ids in pq.read_table(st.base, columns=["trace_ids"], filesystem=st.fs).column("trace_ids").to_pylist():
            out += ids
    return out


def test_plan_and_documents_of_the_examples_unit(storage, tiny_train_model):
    from valley.train.documents import load_documents
    from valley.train.plan import plan_run

    tok, model = tiny_train_model
    data, docs = build_data_dir(storage, tok, n_traces=30, seq_len=256)
    cfg = TrainConfig(data=data, model=str(model), global_batch_size=4, num_workers=2, epochs=3,
                      batch_unit="examples")
    plan = plan_run(cfg, storage, "train/x")
    assert (plan.examples, plan.steps_per_epoch, plan.total_steps) == (30, 8, 24)
    assert plan.counts.last_step_units == 2 and plan.accum is None and plan.rows_left_over_per_epoch == 0
    assert plan.tokens_per_step() == pytest.approx(plan.tokens / 8)
    by_id = {d["id"]: d for d in docs}
    order = _shard_trace_order(plan)
    assert list(plan.documents.lengths) == [len(by_id[t]["input_ids"]) for t in order]
    some = [0, 7, 29]
    got = load_documents(plan.files, plan.documents, some)
    for i in some:
        d = by_id[order[i]]
        assert got[i].trace_id == order[i]
        assert got[i].input_ids.tolist() == d["input_ids"] and got[i].loss_mask.tolist() == d["loss_mask"]
    with pytest.raises(ConfigError, match="fewer than one global batch"):
        plan_run(cfg.model_copy(update={"global_batch_size": 31, "last_step": "drop"}), storage, "train/x")
    rows = plan_run(cfg.model_copy(update={"batch_unit": None}), storage, "train/x")
    assert rows.unit == "rows" and rows.examples == 30 and rows.documents is None


# ---------------------------------------------------------------- real runs against an unpacked reference


def _reference_losses(model_dir, groups: list[list[dict]], cfg: TrainConfig) -> tuple[list[float], list[int]]:
    """Plain transformers + torch AdamW in one process: per step, Σ token losses of its documents (each
    alone, unpacked) / their trained tokens, then DeepSpeed's clipping rule and the same lr schedule."""
    from transformers import AutoModelForCausalLM

    from valley.train.schedule import lr_lambda

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, betas=cfg.adam_betas, eps=cfg.adam_eps,
                            weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(len(groups), cfg.warmup_ratio, cfg.lr_scheduler,
                                                             cfg.min_lr_ratio))
    losses, counts = [], []
    for group in groups:
        opt.zero_grad()
        loss, count = unpacked_loss(model, group)
        loss.backward()
        if cfg.max_grad_norm > 0:  # ZeRO's rule: divide by (norm + 1e-6) / max_norm when that exceeds 1
            norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None))
            scale = (float(norm) + 1e-6) / cfg.max_grad_norm
            if scale > 1:
                for p in model.parameters():
                    if p.grad is not None:
                        p.grad.div_(scale)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        counts.append(count)
    return losses, counts


def _history(storage, result) -> list[dict]:
    return [json.loads(x) for x in storage.read_text(result.metrics_path).splitlines()]


def _run_examples_against_reference(storage, tiny_train_model, workers: int, name: str, **extra) -> str:
    """Train 23 documents, 5 a step, 2 epochs; check the steps and every step's loss against the reference;
    returns the run's stage dir."""
    from valley.train.plan import plan_run
    from valley.train.stage import run_train

    tok_dir, model_dir = tiny_train_model
    data, docs = build_data_dir(storage, tok_dir, n_traces=23, seq_len=512, max_doc=170, name=f"data/{name}")
    cfg = TrainConfig(name=name, data=data, model=str(model_dir), batch_unit="examples", global_batch_size=5,
                      micro_batch_size=1, num_workers=workers, epochs=2, max_seq_len=512, learning_rate=2e-3,
                      warmup_ratio=0.0, max_grad_norm=1.0, cpus_per_worker=0.5, seed=3,
                      deepspeed={"zero_optimization": {"stage3_param_persistence_threshold": 0}},
                      **{"max_failures": 0, "checkpoint_every_steps": 100, **extra})
    result = run_train(cfg, storage)
    history = _history(storage, result)
    steps_per_epoch = math.ceil(23 / 5)
    assert (result.batch_unit, result.last_step, result.examples) == ("examples", "partial", 23)
    assert result.steps_per_epoch == steps_per_epoch and result.steps == 2 * steps_per_epoch
    assert result.last_step_size == 3 and result.examples_left_over_per_epoch == 0
    assert [h["step"] for h in history] == list(range(1, result.steps + 1))
    # every example once per epoch: 5, 5, 5, 5, 3 documents per step, all 23 of them each epoch
    assert [h["examples"] for h in history] == [5, 5, 5, 5, 3] * 2
    plan = plan_run(cfg, storage, result.stage_dir)
    layouts = [lay for epoch in range(2) for lay in epoch_layouts(
        plan.documents.lengths, 5, "partial", seed=3, epoch=epoch, shuffle=True, row_len=512, packed=True,
        world=workers, micro=1)]
    if workers == 1:  # gradient accumulation changes from step to step
        assert len({lay.micro_batches for lay in layouts}) > 1
    else:  # some step leaves a rank without a row: it runs a padding micro-batch
        assert any(len(lay.rows) % workers for lay in layouts)
    by_id = {d["id"]: d for d in docs}
    order = [by_id[t] for t in _shard_trace_order(plan)]
    groups = [[order[int(i)] for i in g] for epoch in range(2)
              for g in epoch_groups(23, 5, "partial", seed=3, epoch=epoch, shuffle=True)]
    for epoch in range(2):  # the documents the steps trained: each once per epoch (their tokens checked below)
        trained = [d["id"] for g in groups[epoch * steps_per_epoch:(epoch + 1) * steps_per_epoch] for d in g]
        assert sorted(trained) == sorted(by_id)
    ref_loss, ref_count = _reference_losses(model_dir, groups, cfg)
    assert [h["loss_tokens"] for h in history] == ref_count
    assert [h["tokens"] for h in history] == [sum(len(d["input_ids"]) for d in g) for g in groups]
    worst = max(abs(h["loss"] - r) for h, r in zip(history, ref_loss, strict=True))
    print(f"\nworst |loss - reference| over {len(history)} steps: {worst:.2e}")
    assert worst < 1e-5, ([h["loss"] for h in history], ref_loss)
    assert history[-1]["loss"] < history[0]["loss"]
    return result.stage_dir


def test_examples_unit_one_worker_matches_the_unpacked_reference(ray_local, storage, tiny_train_model):
    """Steps of 2-3 packed rows (a varying number of micro-batches) on one ZeRO-3 worker."""
    _run_examples_against_reference(storage, tiny_train_model, 1, "ex1")


@pytest.mark.slow
def test_examples_unit_two_workers_matches_the_unpacked_reference(ray_local, storage, tiny_train_model):
    """Two ZeRO-3 workers over gloo: a step's rows split unevenly, the idle rank runs a padding micro-batch."""
    _run_examples_against_reference(storage, tiny_train_model, 2, "ex2")


@pytest.mark.slow
def test_examples_unit_resumes_mid_epoch_on_the_same_steps(ray_local, storage, tiny_train_model):
    """A worker killed after step 3's checkpoint: the restarted run plans epoch 1 again, reads only the
    documents of steps 4-5 and trains them, so every step still matches the uninterrupted reference."""
    from valley.train.loop import KILL_FLAG

    out = _run_examples_against_reference(storage, tiny_train_model, 1, "ex-killed", checkpoint_every_steps=3,
                                          fault_kill_at_step=3, max_failures=1)
    assert storage.exists(out, KILL_FLAG), "the fault drill did not fire"


def test_rows_unit_trains_the_left_over_rows_as_a_smaller_step(ray_local, storage, tiny_train_model):
    """`batch_unit: rows` with `last_step: partial`: an epoch's rows past the last full global batch are one
    more, smaller step (unshuffled here, so the reference knows each step's rows)."""
    from valley.train.stage import run_train

    tok_dir, model_dir = tiny_train_model
    data, docs = build_data_dir(storage, tok_dir, n_traces=24, seq_len=512, max_doc=170, name="data/rows",
                                n_files=1)
    table = storage.read_parquet(data, "tokenized", "all")
    rows = table.column("trace_ids").to_pylist()
    assert len(rows) % 3, len(rows)
    cfg = TrainConfig(name="rows-partial", data=data, model=str(model_dir), last_step="partial", global_batch_size=3,
                      micro_batch_size=1, num_workers=1, epochs=1, max_seq_len=512, learning_rate=2e-3,
                      warmup_ratio=0.0, shuffle=False, cpus_per_worker=0.5, checkpoint_every_steps=100,
                      max_failures=0)
    result = run_train(cfg, storage)
    history = _history(storage, result)
    assert result.steps == math.ceil(len(rows) / 3) and result.last_step_size == len(rows) % 3
    assert result.rows_left_over_per_epoch == 0 and sum(h["examples"] for h in history) == len(docs)
    by_id = {d["id"]: d for d in docs}
    groups = [[by_id[t] for r in rows[i:i + 3] for t in r] for i in range(0, len(rows), 3)]
    ref_loss, ref_count = _reference_losses(model_dir, groups, cfg)
    assert [h["loss_tokens"] for h in history] == ref_count
    worst = max(abs(h["loss"] - r) for h, r in zip(history, ref_loss, strict=True))
    print(f"\nworst |loss - reference| over {len(history)} steps: {worst:.2e}")
    assert worst < 1e-5, ([h["loss"] for h in history], ref_loss)


# ---------------------------------------------------------------- `valley plan` follows the same arithmetic


def test_valley_plan_counts_the_papers_steps_in_examples():
    from pathlib import Path

    from valley.capacity.cluster import GpuNode
    from valley.capacity.estimate import estimate_spec_file
    from valley.capacity.render import render_plan

    paper = str(Path(__file__).resolve().parents[1] / "jobs" / "configs" / "paper.yaml")
    h100 = GpuNode("test", 8, "H100", 79.6)
    plan = estimate_spec_file(paper, node=h100)
    r1k = next(t for t in plan.train if t.run == "qwen2.5-7b-instruct-r1000")
    assert (r1k.batch_unit, r1k.steps_per_epoch, r1k.steps) == ("examples", 8, 40)  # ceil(1000 / 128) × 5
    assert (r1k.last_step_size, r1k.left_over_per_epoch, r1k.examples_per_step) == (104, 0, 125.0)
    assert r1k.tokens_per_step == pytest.approx(r1k.tokens_per_epoch / 8, abs=1)
    assert " examples " in render_plan(plan) and "104 ex" in render_plan(plan)
    # counted in packed rows (6M tokens in ~189 rows of 32K): one step an epoch, 61 rows never trained
    rows = estimate_spec_file(paper, ["train.batch_unit=rows", "train.last_step=drop"], node=h100)
    r1k_rows = next(t for t in rows.train if t.run == "qwen2.5-7b-instruct-r1000")
    assert (r1k_rows.steps, r1k_rows.left_over_per_epoch, r1k_rows.last_step_size) == (5, 61, 0)
    assert r1k_rows.flops == pytest.approx(r1k.flops * 128 / 189)  # only the trained rows cost FLOPs


def test_malformed_rows_are_named(tmp_path):
    import pyarrow as pa

    from valley.errors import InputError
    from valley.train.documents import index_documents, row_document_lengths

    lengths, per_row = row_document_lengths(np.array([0, 1, 2, 0, 1, 0, 0, 1, 5, 6]), np.array([6, 4]),
                                            np.array([5, 2]))
    assert lengths.tolist() == [3, 2, 2] and per_row.tolist() == [2, 1]  # padding (past n_tokens) is no document
    assert row_document_lengths(np.array([1, 2, 0]), np.array([3]), np.array([3]))[1].tolist() == [-1]

    def shard(trace_ids: list[list[str]], name: str) -> str:
        table = pa.table({"position_ids": [[0, 1, 0, 1, 2], [0, 1, 2, 3, 0]], "n_tokens": [5, 4],
                          "trace_ids": trace_ids})
        pq.write_table(table, tmp_path / name)
        return str(tmp_path / name)

    assert index_documents([shard([["a", "b"], ["c"]], "ok.parquet")], 8).lengths == (2, 3, 4)
    with pytest.raises(InputError, match=r"holds 1 documents .* names 2 in trace_ids \['c', 'd'\].*row 1, field 'pos"):
        index_documents([shard([["a", "b"], ["c", "d"]], "bad.parquet")], 8)
    with pytest.raises(InputError, match=r"longer than a row \(3\).*bad2.parquet, row 1, field 'input_ids'"):
        index_documents([shard([["a", "b"], ["c"]], "bad2.parquet")], 3)
