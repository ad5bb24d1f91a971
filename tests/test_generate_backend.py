"""The transformers backend on a tiny random Qwen2 model: token counts, stop vs length, per-sample
seeds that make a sample independent of its batch, greedy decoding, and the seeded sampler itself."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from valley.generate.backends.base import Request, Sampling, sample_seed
from valley.generate.backends.factory import make_backend
from valley.generate.backends.hf import SeededSampler, finish


@pytest.fixture(scope="module")
def backend(tiny_model):
    return make_backend("transformers", tiny_model, num_threads=1)


PROMPT = "<|im_start|>user\nRead N and print N+1.<|im_end|>\n<|im_start|>assistant\n"


def _requests(n: int, prompt: str = PROMPT) -> list[Request]:
    return [Request("q1", i, prompt, sample_seed(0, "q1", i)) for i in range(n)]


def test_sample_seed_is_stable_and_distinct():
    assert sample_seed(0, "abc123", 0) == sample_seed(0, "abc123", 0)
    seeds = {sample_seed(s, q, i) for s in (0, 1) for q in ("a", "b") for i in range(4)}
    assert len(seeds) == 16 and all(0 <= s < 2**63 for s in seeds)


def test_length_finish_counts_max_tokens(backend):
    out = backend.generate(_requests(3), Sampling(temperature=1.0, top_p=0.95, max_tokens=12))
    assert [(c.question_id, c.sample_idx) for c in out] == [("q1", 0), ("q1", 1), ("q1", 2)]
    assert all(c.finish_reason == "length" and c.n_tokens == 12 for c in out)
    assert len({c.text for c in out}) == 3  # different seeds, different samples


def test_samples_do_not_depend_on_batch_mates(backend):
    sampling = Sampling(temperature=0.9, top_p=0.9, max_tokens=10)
    other = "<|im_start|>user\nA much longer, different question that pads the batch a lot.<|im_end|>\n" \
            "<|im_start|>assistant\n"
    alone = backend.generate(_requests(2), sampling)
    mixed = backend.generate([Request("q2", 0, other, 7), *_requests(2)], sampling)[1:]
    assert [c.text for c in alone] == [c.text for c in mixed]


def test_greedy_is_deterministic(backend):
    a = backend.generate(_requests(2), Sampling(temperature=0.0, top_p=1.0, max_tokens=8))
    assert a[0].text == a[1].text  # seeds do not matter at temperature 0


def _stopping_model(backend, tiny_model: str, tmp_path) -> str:
    """A copy of the model whose end-of-sequence ids include the token greedy decoding emits first."""
    ids = torch.tensor([backend.tokenizer.encode(PROMPT, add_special_tokens=False)])
    with torch.inference_mode():
        first_id = int(backend.model(input_ids=ids).logits[0, -1].argmax())
    copy = tmp_path / "stop-model"
    shutil.copytree(tiny_model, copy)
    gen_cfg = json.loads((copy / "generation_config.json").read_text())
    gen_cfg["eos_token_id"] = [gen_cfg["eos_token_id"], first_id]
    (copy / "generation_config.json").write_text(json.dumps(gen_cfg))
    return str(copy)


def test_stop_when_an_end_token_is_generated(backend, tiny_model, tmp_path):
    stopping = make_backend("transformers", _stopping_model(backend, tiny_model, tmp_path), num_threads=1)
    (c,) = stopping.generate(_requests(1), Sampling(0.0, 1.0, 8))
    assert (c.finish_reason, c.n_tokens) == ("stop", 1)


def test_per_request_budgets_and_ignore_eos(backend, tiny_model, tmp_path):
    """The benchmark's long tails: each request's own max_tokens, and no stop at end of sequence."""
    stopping = make_backend("transformers", _stopping_model(backend, tiny_model, tmp_path), num_threads=1)
    requests = [Request("q1", i, PROMPT, sample_seed(0, "q1", i), max_tokens=m) for i, m in enumerate([3, 9, None])]
    out = stopping.generate(requests, Sampling(0.0, 1.0, 6, ignore_eos=True))
    assert [(c.n_tokens, c.finish_reason) for c in out] == [(3, "length"), (9, "length"), (6, "length")]
    assert [c.n_tokens for c in stopping.generate(requests, Sampling(0.0, 1.0, 6))] == [1, 1, 1]  # EOS first
    # a per-request budget leaves its sample as it was under the shared budget
    sampling = Sampling(temperature=0.9, top_p=0.9, max_tokens=10)
    shared = backend.generate(_requests(2), sampling)
    own = backend.generate([Request(r.question_id, r.sample_idx, r.prompt, r.seed, 10) for r in _requests(2)],
                           Sampling(0.9, 0.9, 4))
    assert [c.text for c in own] == [c.text for c in shared]


def test_finish_rule():
    assert finish([5, 6, 2, 0, 0], {2}, 5) == (3, "stop")
    assert finish([5, 6, 7], {2}, 3) == (3, "length")
    assert finish([2], {2}, 1) == (1, "stop")


def test_seeded_sampler_respects_top_p():
    scores = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]]))
    picks = set()
    for seed in range(200):
        out = SeededSampler([seed], temperature=1.0, top_p=0.8)(torch.zeros(1, 1, dtype=torch.long), scores)
        (token,) = torch.nonzero(out[0] == 0).flatten().tolist()
        picks.add(token)
    assert picks == {0, 1}  # the 0.05 tail is outside the 0.8 nucleus


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown generation backend"):
        make_backend("tgi", "x")
