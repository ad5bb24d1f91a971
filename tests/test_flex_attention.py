"""Packed rows through FlexAttention with a document BlockMask, against the unpacked reference (no Ray).

torch implements FlexAttention's backward only in its GPU kernels and refuses `requires_grad` inputs on
CPU; the same operator has a dense reference implementation (forward and backward) that torch runs when
it is not compiled. The gradient tests run the model through that reference — transformers' own
flex_attention integration, our BlockMask, torch's op — with the device guard and transformers'
`torch.compile` wrapper lifted for the test only.
"""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch

from fixtures import pack, tiny_model_and_docs
from valley.train.batches import to_micro_batch
from valley.train.packing_attention import (
    IGNORE,
    block_causal_mask,
    document_block_mask,
    model_inputs,
    shifted_targets,
    token_loss_sum,
)


@pytest.fixture(scope="module")
def model_and_docs(tmp_path_factory):
    return tiny_model_and_docs(tmp_path_factory.mktemp("flex"), 150)


@pytest.fixture()
def dense_flex(monkeypatch):
    """Run FlexAttention through torch's dense reference on CPU (see the module docstring)."""
    import torch.nn.attention.flex_attention as flex
    import transformers.integrations.flex_attention as hf_flex

    monkeypatch.setattr(flex, "_validate_device", lambda *args: None)
    monkeypatch.setattr(hf_flex.WrappedFlexAttention, "__call__", lambda self: flex.flex_attention)


def _load(model_dir, impl: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation=impl)


@pytest.mark.parametrize("lengths", [[100, 150, 50], [300], [128, 128, 44], [5, 250, 45], [1] * 7 + [293]])
def test_block_mask_matches_the_dense_document_mask(lengths):
    """Every block the BlockMask skips holds no allowed pair, every block it marks full holds only allowed
    pairs, and partial blocks reproduce the element mask through mask_mod — for boundaries on, off and
    inside block edges, and a tail block shorter than 128."""
    pos = torch.tensor([[i for n in lengths for i in range(n)]])
    dense = block_causal_mask(pos, torch.float32)[0, 0] == 0  # (L, L) allowed pairs
    bm = document_block_mask(pos)
    length = pos.shape[1]
    assert bm.shape[-2:] == (length, length)
    # element level: the BlockMask's own dense view equals the reference mask
    from torch.nn.attention.flex_attention import create_mask

    assert torch.equal(create_mask(bm.mask_mod, 1, 1, length, length, device="cpu")[0, 0], dense)
    blocks = -(-length // 128)
    kv_num, kv_idx = bm.kv_num_blocks[0, 0], bm.kv_indices[0, 0]
    full_num, full_idx = bm.full_kv_num_blocks[0, 0], bm.full_kv_indices[0, 0]
    for qb in range(blocks):
        partial = set(kv_idx[qb, :kv_num[qb]].tolist())
        full = set(full_idx[qb, :full_num[qb]].tolist())
        assert not partial & full
        rows = slice(qb * 128, min(length, (qb + 1) * 128))
        for kb in range(blocks):
            tile = dense[rows, kb * 128:min(length, (kb + 1) * 128)]
            if kb in full:
                assert bool(tile.all()), (qb, kb)
            elif kb not in partial:
                assert not bool(tile.any()), (qb, kb)  # skipped: nothing allowed in it
    # one document per row: blocks strictly below the diagonal are full, so they skip mask_mod (a short
    # tail block is always checked element by element)
    if len(lengths) == 1:
        whole = blocks - (1 if length % 128 else 0)
        assert [int(full_num[qb]) for qb in range(whole)] == list(range(whole))


def test_block_mask_is_small():
    """At 32K tokens the BlockMask is a few MB where the SDPA path's mask is 4 GiB in fp32."""
    pos = torch.cat([torch.arange(n) for n in (9000, 12000, 11768)])[None]
    bm = document_block_mask(pos)
    tensors = [bm.kv_num_blocks, bm.kv_indices, bm.full_kv_num_blocks, bm.full_kv_indices, bm.q_num_blocks,
               bm.q_indices, bm.full_q_num_blocks, bm.full_q_indices]
    size = sum(t.numel() * t.element_size() for t in tensors if t is not None)
    assert size < 4 * 1024 ** 2, size


def test_flex_packed_loss_and_gradients_equal_unpacked(model_and_docs, dense_flex):
    """Σ token CE over packed rows with FlexAttention == Σ over each document run alone (plain causal
    attention, no mask), and so are the gradients of every parameter."""
    model_dir, tok, docs = model_and_docs
    rows = pack(docs, 512, tok.pad_token_id)
    assert max(r["n_docs"] for r in rows) >= 3
    mb = to_micro_batch(pa.Table.from_pylist(rows), max_seq_len=512)
    targets = shifted_targets(mb.input_ids, mb.loss_mask, mb.position_ids)

    packed_model = _load(model_dir, "flex_attention").train()
    kwargs = model_inputs(mb.input_ids, mb.position_ids, "flex_attention", torch.float32)
    assert "attention_mask" in kwargs and not isinstance(kwargs["attention_mask"], torch.Tensor)
    packed = token_loss_sum(packed_model(**kwargs).logits, targets)
    packed.backward()

    reference_model = _load(model_dir, "eager").train()
    by_id = {d["id"]: d for d in docs}
    reference = torch.zeros(())
    for row in rows:
        for tid in row["trace_ids"]:
            d = by_id[tid]
            ids = torch.tensor([d["input_ids"]])
            labels = torch.tensor([d["input_ids"][1:] + [IGNORE]])
            labels[torch.tensor([d["loss_mask"][1:] + [0]]) == 0] = IGNORE
            reference = reference + token_loss_sum(reference_model(input_ids=ids).logits, labels)
    reference.backward()
    assert int((targets != IGNORE).sum()) > 100
    assert torch.allclose(packed, reference, rtol=1e-5), (float(packed), float(reference))
    ref_grads = dict(reference_model.named_parameters())
    for name, p in packed_model.named_parameters():
        assert torch.allclose(p.grad, ref_grads[name].grad, atol=1e-5, rtol=1e-4), name


def test_flex_differs_without_document_boundaries(model_and_docs, dense_flex):
    """The equality above has teeth: a BlockMask over one undivided row lets later documents see earlier
    ones, and the logits change."""
    model_dir, tok, docs = model_and_docs
    rows = pack(docs, 512, tok.pad_token_id)
    mb = to_micro_batch(pa.Table.from_pylist(rows[:1]), max_seq_len=512)
    model = _load(model_dir, "flex_attention").eval()
    one_doc = torch.arange(mb.input_ids.shape[1])[None]
    with torch.no_grad():
        kwargs = model_inputs(mb.input_ids, mb.position_ids, "flex_attention", torch.float32)
        masked = model(**kwargs).logits
        leaky = model(**dict(kwargs, attention_mask=document_block_mask(one_doc))).logits
    assert (leaky - masked).abs().max() > 1e-3
