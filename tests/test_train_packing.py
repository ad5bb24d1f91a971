"""Packed-sequence attention and loss against plain per-document transformers forwards (no Ray)."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest
import torch

from fixtures import pack, tiny_model_and_docs
from valley.errors import InputError
from valley.train.batches import steps, to_micro_batch
from valley.train.packing_attention import (
    IGNORE,
    block_causal_mask,
    document_ids,
    model_inputs,
    shifted_targets,
    token_loss_sum,
)


@pytest.fixture(scope="module")
def model_and_docs(tmp_path_factory):
    return tiny_model_and_docs(tmp_path_factory.mktemp("pack"), 120)


def _load(model_dir, impl: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation=impl).eval()


def test_document_ids_and_mask():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 0]])
    assert document_ids(pos).tolist() == [[1, 1, 1, 2, 2, 3, 3, 3, 4]]
    allowed = block_causal_mask(pos, torch.float32)[0, 0] == 0
    assert allowed[4].tolist() == [False, False, False, True, True, False, False, False, False]
    assert allowed[7].tolist() == [False] * 5 + [True, True, True, False]
    assert allowed[8].tolist() == [False] * 8 + [True]  # padding sees only itself


def test_shifted_targets_stay_inside_documents():
    ids = torch.tensor([[10, 11, 12, 20, 21, 22, 0, 0]])
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 0, 0]])  # doc 2's first token is masked "on": still not a target
    pos = torch.tensor([[0, 1, 2, 0, 1, 2, 0, 1]])
    assert shifted_targets(ids, mask, pos).tolist() == [[11, 12, IGNORE, 21, 22, IGNORE, IGNORE, IGNORE]]


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_logits_match_per_document_forward(model_and_docs, impl):
    model_dir, tok, docs = model_and_docs
    model = _load(model_dir, impl)
    rows = pack(docs, 512, tok.pad_token_id)
    assert max(r["n_docs"] for r in rows) >= 3
    table = pa.Table.from_pylist(rows)
    mb = to_micro_batch(table, max_seq_len=512)
    with torch.no_grad():
        packed = model(**model_inputs(mb.input_ids, mb.position_ids, impl, torch.float32)).logits
        by_id = {d["id"]: d for d in docs}
        for r, row in enumerate(rows):
            start = 0
            for tid in row["trace_ids"]:
                ids = torch.tensor([by_id[tid]["input_ids"]])
                alone = model(input_ids=ids).logits[0]
                got = packed[r, start:start + ids.shape[1]]
                assert torch.allclose(got, alone, atol=1e-5), (impl, tid, (got - alone).abs().max())
                start += ids.shape[1]


def test_without_mask_documents_would_leak(model_and_docs):
    """The check above has teeth: plain causal attention over the packed row differs from per-document."""
    model_dir, tok, docs = model_and_docs
    model = _load(model_dir, "sdpa")
    rows = pack(docs, 512, tok.pad_token_id)
    mb = to_micro_batch(pa.Table.from_pylist(rows[:1]), max_seq_len=512)
    n0 = len(docs[[d["id"] for d in docs].index(rows[0]["trace_ids"][0])]["input_ids"])
    with torch.no_grad():
        masked = model(**model_inputs(mb.input_ids, mb.position_ids, "sdpa", torch.float32)).logits
        causal = model(input_ids=mb.input_ids, position_ids=mb.position_ids,
                       attention_mask=torch.ones_like(mb.input_ids), use_cache=False).logits
    assert (masked[0, n0:n0 + 20] - causal[0, n0:n0 + 20]).abs().max() > 1e-3


def test_flash_attention_inputs_are_one_flat_row(model_and_docs):
    """FA2 (GPU) gets the micro-batch as one row; the same flattening through the masked SDPA path gives
    the same loss, so no document boundary is lost by it."""
    model_dir, tok, docs = model_and_docs
    model = _load(model_dir, "sdpa")
    mb = to_micro_batch(pa.Table.from_pylist(pack(docs, 512, tok.pad_token_id)[:2]), max_seq_len=512)
    fa = model_inputs(mb.input_ids, mb.position_ids, "flash_attention_2", torch.float32)
    assert fa["input_ids"].shape == (1, 1024) and "attention_mask" not in fa
    targets = shifted_targets(mb.input_ids, mb.loss_mask, mb.position_ids)
    with torch.no_grad():
        rows = model(**model_inputs(mb.input_ids, mb.position_ids, "sdpa", torch.float32)).logits
        flat = model(**model_inputs(fa["input_ids"], fa["position_ids"], "sdpa", torch.float32)).logits
    assert flat.shape[:2] == (1, 1024)
    assert torch.allclose(token_loss_sum(rows, targets), token_loss_sum(flat, targets), rtol=1e-5)


def test_packed_loss_equals_unpacked_transformers_loss(model_and_docs):
    """Σ token CE / N over packed rows == transformers' own label loss over the unpacked documents."""
    model_dir, tok, docs = model_and_docs
    model = _load(model_dir, "sdpa")
    rows = pack(docs, 512, tok.pad_token_id)
    mb = to_micro_batch(pa.Table.from_pylist(rows), max_seq_len=512)
    with torch.no_grad():
        logits = model(**model_inputs(mb.input_ids, mb.position_ids, "sdpa", torch.float32)).logits
        targets = shifted_targets(mb.input_ids, mb.loss_mask, mb.position_ids)
        packed = token_loss_sum(logits, targets, chunk=100) / (targets != IGNORE).sum()
        total, count = 0.0, 0
        for d in docs:
            ids = torch.tensor([d["input_ids"]])
            labels = ids.masked_fill(torch.tensor([d["loss_mask"]]) == 0, IGNORE)
            n = int((labels[:, 1:] != IGNORE).sum())
            total += float(model(input_ids=ids, labels=labels).loss) * n
            count += n
    assert int((targets != IGNORE).sum()) == count
    assert abs(float(packed) - total / count) < 1e-5


@pytest.mark.parametrize("chunk_tokens", [64, 100_000])
def test_chunked_loss_matches_full_logits_loss_and_gradients(model_and_docs, chunk_tokens):
    """The training forward (decoder + checkpointed head chunks over trained positions only) gives the
    same loss and the same gradient on every parameter, tied embedding included, as full logits."""
    from valley.train.chunked_loss import CausalLMLoss, chunks_for

    model_dir, tok, docs = model_and_docs
    rows = pack(docs, 512, tok.pad_token_id)
    mb = to_micro_batch(pa.Table.from_pylist(rows), max_seq_len=512)
    targets = shifted_targets(mb.input_ids, mb.loss_mask, mb.position_ids)
    kwargs = model_inputs(mb.input_ids, mb.position_ids, "sdpa", torch.float32)
    assert bool((targets == IGNORE).any()) and bool((targets != IGNORE).any())

    plain = _load(model_dir, "sdpa").train()
    assert plain.get_output_embeddings().weight is plain.get_input_embeddings().weight  # tied
    reference = token_loss_sum(plain(**kwargs).logits, targets)
    reference.backward()
    wrapped = CausalLMLoss(_load(model_dir, "sdpa").train(), chunk_tokens=chunk_tokens)
    loss = wrapped(targets=targets, **kwargs)
    loss.backward()
    assert chunks_for(targets.numel(), chunk_tokens) == (targets.numel() // 64 if chunk_tokens == 64 else 1)
    assert torch.allclose(loss, reference, rtol=1e-6), (float(loss), float(reference))
    grads = dict(plain.named_parameters())
    for name, p in wrapped.lm.named_parameters():
        ref = grads[name].grad
        # fp32 sums in another order: the tied embedding's gradient adds up thousands of terms (largest ~1e2),
        # so an element can move by ~1e-5 on some CPUs' kernels; the bound scales with the tensor's size
        scale = max(1.0, float(ref.abs().max()))
        assert torch.allclose(p.grad, ref, atol=1e-6 * scale, rtol=1e-4), (name, float((p.grad - ref).abs().max()))


def test_chunked_loss_with_more_chunks_than_targets():
    from valley.train.chunked_loss import chunked_loss_sum

    head = torch.nn.Linear(4, 7, bias=False)
    hidden = torch.randn(1, 6, 4, requires_grad=True)
    targets = torch.tensor([[IGNORE, 3, IGNORE, IGNORE, 5, IGNORE]])
    loss = chunked_loss_sum(hidden, targets, head, n_chunks=5)  # three of the chunks are empty
    expected = torch.nn.functional.cross_entropy(head(hidden[0, [1, 4]]), torch.tensor([3, 5]), reduction="sum")
    assert torch.allclose(loss, expected)
    loss.backward()
    assert hidden.grad[0, [0, 2, 3, 5]].abs().sum() == 0 and hidden.grad[0, [1, 4]].abs().sum() > 0
    # no targets at all: zero loss, still differentiable
    assert float(chunked_loss_sum(hidden, torch.full((1, 6), IGNORE), head, n_chunks=2)) == 0.0


def test_chunked_loss_refuses_models_that_transform_logits(model_and_docs):
    from valley.train.chunked_loss import CausalLMLoss

    lm = _load(model_and_docs[0], "sdpa")
    lm.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        CausalLMLoss(lm, chunk_tokens=1024)


def test_unpacked_rows_are_padded_per_micro_batch():
    rows = pa.table({
        "input_ids": pa.array([[5, 6, 7], [8, 9]], pa.list_(pa.int32())),
        "loss_mask": pa.array([[0, 1, 1], [0, 1]], pa.list_(pa.int8())),
        "position_ids": pa.array([[0, 1, 2], [0, 1]], pa.list_(pa.int32())),
        "n_tokens": pa.array([3, 2], pa.int32()),
        "trace_ids": [["a"], ["b"]],
    })
    mb = to_micro_batch(rows, max_seq_len=8, pad_id=1)
    assert mb.input_ids.tolist() == [[5, 6, 7], [8, 9, 1]]
    assert mb.loss_mask.tolist() == [[0, 1, 1], [0, 1, 0]]
    assert mb.position_ids.tolist() == [[0, 1, 2], [0, 1, 0]]
    assert mb.n_tokens == 5 and mb.trace_ids == ["a", "b"]
    with pytest.raises(InputError, match=r"exceeds max_seq_len=2.*field 'input_ids'"):
        to_micro_batch(rows, max_seq_len=2)
    bad = rows.set_column(1, "loss_mask", pa.array([[0, 1], [0, 1]], pa.list_(pa.int8())))
    with pytest.raises(InputError, match=r"trace_ids \['a'\].*field 'loss_mask'"):
        to_micro_batch(bad, max_seq_len=8)
    assert [len(g) for g in steps(iter(range(7)), 3)] == [3, 3]


def test_flops_count_matches_parameters(model_and_docs):
    from valley.train.flops import (
        attention_flops,
        doc_lengths_of,
        matmul_flops_per_token,
        peak_flops,
        train_flops,
    )

    model_dir, _, _ = model_and_docs
    model = _load(model_dir, "sdpa")
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert matmul_flops_per_token(model.config) == 2 * linear  # lm_head included (tied or not)
    c = model.config
    assert attention_flops(c, [3]) == 4 * c.num_hidden_layers * c.hidden_size * 6
    assert train_flops(c, [2, 2]) < train_flops(c, [4])  # packing short docs is cheaper than one long one
    assert doc_lengths_of([[0, 1, 2, 0, 1, 0, 1]], [5]) == [3, 2]
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12 and peak_flops("cpu") is None


def test_lr_schedule_and_deepspeed_config():
    from valley.train.config import TrainConfig
    from valley.train.deepspeed_config import build_ds_config
    from valley.train.schedule import lr_lambda

    f = lr_lambda(100, 0.1, "cosine")
    assert f(0) == 0 and f(5) == 0.5 and f(10) == 1.0 and abs(f(55) - 0.5) < 1e-9 and f(100) < 1e-9
    assert lr_lambda(10, 0.0, "linear")(5) == 0.5
    cfg = TrainConfig(data="d", model="m", use_gpu=True, offload_optimizer=True,
                      deepspeed={"zero_optimization": {"stage3_max_live_parameters": 5}})
    ds = build_ds_config(cfg, 8)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) \
        == (128, 1, 16)
    assert ds["bf16"]["enabled"] and ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["overlap_comm"] and ds["zero_optimization"]["contiguous_gradients"]
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["stage3_max_live_parameters"] == 5  # user override merged
    assert ds["optimizer"]["params"]["lr"] == 8e-5
    assert not build_ds_config(TrainConfig(data="d", model="m"), 8)["bf16"]["enabled"]  # CPU: fp32
    assert math.isclose(TrainConfig(data="d", model="m").warmup_ratio, 0.1)


def test_restore_downloads_only_this_ranks_partitions(tmp_path):
    import pyarrow.fs as pafs
    import ray.train

    from valley.train.checkpoint import _download_for_rank, needed_by_rank

    names = ["latest", "zero/mp_rank_00_model_states.pt", "zero/zero_pp_rank_0_mp_rank_00_model_states.pt",
             "zero/bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt", "zero/zero_pp_rank_12_mp_rank_00_model_states.pt"]
    assert [n for n in names if needed_by_rank(n, 1)] == names[:2] + [names[3]]
    assert [n for n in names if needed_by_rank(n, 12)] == names[:2] + [names[4]]
    src = tmp_path / "ckpt"
    for n in names:
        (src / n).parent.mkdir(parents=True, exist_ok=True)
        (src / n).write_text(n)
    _download_for_rank(ray.train.Checkpoint(str(src), filesystem=pafs.LocalFileSystem()), 1, str(tmp_path / "r1"))
    got = sorted(p.relative_to(tmp_path / "r1").as_posix() for p in (tmp_path / "r1").rglob("*") if p.is_file())
    assert got == sorted(names[:2] + [names[3]])
    assert (tmp_path / "r1" / names[3]).read_text() == names[3]
