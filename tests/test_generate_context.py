"""Context length: the budget is checked against the model's config.json (with YaRN overrides) before any
engine loads, a sample cut by the window is recorded as "context", and it counts as incomplete."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from valley.errors import ConfigError
from valley.generate.backends.base import Request, Sampling, sample_seed
from valley.generate.backends.factory import make_backend
from valley.generate.config import GenerateConfig
from valley.generate.context import check_model_context, check_prompts, merge_overrides, model_window

YARN4 = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
PROMPT = "<|im_start|>user\nRead N and print N+1.<|im_end|>\n<|im_start|>assistant\n"


def _model_dir(tmp_path: Path, **config) -> str:
    """A model directory holding only a config.json (all the check reads)."""
    path = tmp_path / "model"
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "qwen2", **config}))
    return str(path)


def _qwen25_7b(tmp_path: Path) -> str:
    # Qwen2.5-7B-Instruct's config.json as published: a 32,768-token window, no rope_scaling
    return _model_dir(tmp_path, max_position_embeddings=32768, rope_theta=1000000.0, rope_scaling=None,
                      sliding_window=131072, max_window_layers=28, use_sliding_window=False)


def _cfg(model: str, **fields) -> GenerateConfig:
    return GenerateConfig(name="lcb", model=model, problems=["p.jsonl"], backend="vllm", **fields)


# ---- config hash and fields ------------------------------------------------------------------------
def test_hash_unchanged_for_configs_without_the_new_fields():
    # the hashes the code gave before rope_scaling/hf_overrides existed
    old = _cfg("/models/Qwen2.5-7B-Instruct", max_tokens=32768, max_model_len=34816, dtype="bfloat16")
    old.problems = ["/data/lcb/test.jsonl"]
    assert old.config_hash() == "e11f8247563e57c4d98a7317bf52c35db0759d21d1aeb1d8bcea3d7f430601ed"
    assert GenerateConfig(model="m", problems=["p"]).config_hash() == (
        "10fbc57ba03360673108baa6bd63c485f77e94faaacb9339897249f0b3fa8a1a")
    yarn = old.model_copy(update={"rope_scaling": YARN4})
    assert yarn.config_hash() != old.config_hash()  # different tokens, a different run


def test_rope_scaling_joins_hf_overrides_and_must_agree():
    cfg = _cfg("m", rope_scaling=YARN4, hf_overrides={"sliding_window": None})
    assert cfg.model_overrides() == {"sliding_window": None, "rope_scaling": YARN4}
    with pytest.raises(ValueError, match="rope_scaling and hf_overrides.rope_scaling differ"):
        _cfg("m", rope_scaling=YARN4, hf_overrides={"rope_scaling": {**YARN4, "factor": 2.0}})
    with pytest.raises(ValueError, match="rope_scaling needs a rope_type"):
        _cfg("m", rope_scaling={"factor": 4.0})


def test_no_stop_strings_by_default():
    cfg = GenerateConfig(model="m", problems=["p"])
    assert not any("stop" in f for f in GenerateConfig.model_fields)  # EOS and max_tokens end a sample
    assert cfg.max_tokens == 32768 and cfg.max_model_len is None


# ---- the window vLLM derives ---------------------------------------------------------------------
def test_window_follows_vllm_rules():
    assert model_window({"max_position_embeddings": 32768}).tokens == 32768
    assert model_window({"max_position_embeddings": 32768, "rope_scaling": YARN4}).tokens == 131072
    # llama3 / longrope: max_position_embeddings already is the scaled window
    llama31 = {"max_position_embeddings": 131072, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                                                                    "original_max_position_embeddings": 8192}}
    assert model_window(llama31).tokens == 131072
    assert model_window({"max_position_embeddings": 4096, "rope_scaling": {"type": "linear", "factor": 2}}).tokens == 8192
    assert model_window({"n_positions": 1024, "max_position_embeddings": 2048}).tokens == 1024  # smallest key
    assert model_window({"vocab_size": 10}).tokens is None


def test_rope_override_keeps_rope_theta_of_new_style_configs():
    merged = merge_overrides({"max_position_embeddings": 32768,
                              "rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}}, {"rope_scaling": YARN4})
    assert merged["rope_parameters"] == {"rope_theta": 1e6, **YARN4} and "rope_scaling" not in merged
    assert model_window(merged).tokens == 131072


# ---- refusing budgets that do not fit ------------------------------------------------------------
def test_paper_budget_on_qwen_without_yarn_is_refused(tmp_path):
    cfg = _cfg(_qwen25_7b(tmp_path), max_tokens=32768, max_model_len=34816)
    with pytest.raises(ConfigError) as err:
        check_model_context(cfg)
    msg = str(err.value)
    for part in ("max_model_len=34816", "max_position_embeddings=32768", "no rope_scaling",
                 "rope_scaling: {rope_type: yarn, factor: 2.0, original_max_position_embeddings: 32768}",
                 "lower max_tokens"):
        assert part in msg, msg


def test_max_tokens_filling_the_window_is_refused(tmp_path):
    cfg = _cfg(_qwen25_7b(tmp_path), max_tokens=32768)
    with pytest.raises(ConfigError, match=r"max_tokens=32768 leaves no room for a prompt in the model's context "
                                          r"window \(32768 tokens"):
        check_model_context(cfg)
    small = _cfg(_model_dir(tmp_path, max_position_embeddings=32768), max_tokens=4096, max_model_len=4096)
    with pytest.raises(ConfigError, match=r"max_tokens=4096 leaves no room for a prompt in max_model_len=4096.*"
                                          r"raise max_model_len to at least 4097"):
        check_model_context(small)


def test_yarn_factor_4_makes_the_paper_budget_fit(tmp_path):
    model = _qwen25_7b(tmp_path)
    for fields in ({"rope_scaling": YARN4}, {"hf_overrides": {"rope_scaling": {**YARN4, "type": "yarn"}}}):
        cfg = _cfg(model, max_tokens=32768, max_model_len=34816, **fields)
        window = check_model_context(cfg)
        assert window.tokens == 131072 and "yarn factor 4" in window.describe()
        check_prompts(cfg, window, {"a": 1500, "b": 2048})  # fits 34816 exactly
        with pytest.raises(ConfigError, match=r"plus the longest prompt \(2049 tokens, problem b\) is 34817 tokens, "
                                              r"more than max_model_len=34816.*raise max_model_len to at least 34817"):
            check_prompts(cfg, window, {"a": 1500, "b": 2049})


def test_experiment_spec_generate_section_of_paper_yaml_is_accepted(tmp_path):
    import yaml

    spec = yaml.safe_load(Path(__file__).resolve().parents[1].joinpath("jobs/configs/paper.yaml").read_text())
    qwen = next(s for s in spec["students"] if "qwen" in s["name"].lower())
    fields = {**spec["generate"], **(qwen.get("generate") or {})}
    cfg = GenerateConfig(name="paper", model=_qwen25_7b(tmp_path), **fields)
    assert check_model_context(cfg).tokens >= cfg.max_model_len >= cfg.max_tokens


def test_student_generate_overrides_are_per_student_and_limited(tmp_path):
    import yaml

    from valley.experiment.spec import load_spec

    base = {"experiment": "x", "data": {"inputs": ["a"]}, "generate": {"problems": ["p"], "max_tokens": 1024},
            "students": [{"name": "q", "model": "m", "generate": {"rope_scaling": YARN4}}, {"name": "l", "model": "m"}]}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(base))
    spec = load_spec(path)
    assert spec.generate_fields("q")["rope_scaling"] == YARN4 and "rope_scaling" not in spec.generate_fields("l")
    base["students"][1]["generate"] = {"max_tokens": 2048}
    path.write_text(yaml.safe_dump(base))
    with pytest.raises(ConfigError, match=r"student 'l': generate must not set \['max_tokens'\]"):
        load_spec(path)


# ---- per-sample finish reasons on the transformers backend ---------------------------------------
@pytest.fixture(scope="module")
def prompt_len(tiny_model):
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(tiny_model).encode(PROMPT, add_special_tokens=False))


def _short_window_copy(tiny_model: str, tmp_path: Path, window: int) -> str:
    copy = tmp_path / "short"
    shutil.copytree(tiny_model, copy)
    config = json.loads((copy / "config.json").read_text())
    config["max_position_embeddings"] = window
    (copy / "config.json").write_text(json.dumps(config))
    return str(copy)


def _requests(n: int, prompt: str = PROMPT) -> list[Request]:
    return [Request("q1", i, prompt, sample_seed(0, "q1", i)) for i in range(n)]


def test_hf_backend_records_context_stops_and_yarn_lifts_them(tiny_model, prompt_len, tmp_path):
    short = _short_window_copy(tiny_model, tmp_path, prompt_len + 4)
    sampling = Sampling(temperature=1.0, top_p=0.95, max_tokens=10)
    cut = make_backend("transformers", short, num_threads=1).generate(_requests(2), sampling)
    assert [(c.finish_reason, c.n_tokens) for c in cut] == [("context", 4)] * 2
    yarn = {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": prompt_len + 4}}
    backend = make_backend("transformers", short, num_threads=1, hf_overrides=yarn)
    assert backend.model.config.rope_parameters["rope_type"] == "yarn"
    assert [(c.finish_reason, c.n_tokens) for c in backend.generate(_requests(2), sampling)] == [("length", 10)] * 2


def test_hf_backend_max_model_len_cuts_per_row_without_changing_batch_mates(tiny_model, prompt_len):
    backend = make_backend("transformers", tiny_model, num_threads=1, max_model_len=prompt_len + 6)
    sampling = Sampling(temperature=0.9, top_p=0.9, max_tokens=6)
    longer = PROMPT.replace("N+1", "N+1 now")  # a few tokens longer: less room left
    alone = backend.generate(_requests(2), sampling)
    mixed = backend.generate([Request("q2", 0, longer, 7), *_requests(2)], sampling)
    assert [(c.finish_reason, c.n_tokens) for c in alone] == [("length", 6)] * 2  # prompt + 6 fits exactly
    assert mixed[0].finish_reason == "context" and mixed[0].n_tokens < 6
    assert [c.text for c in mixed[1:]] == [c.text for c in alone]


def test_vllm_length_short_of_max_tokens_is_context():
    from valley.generate.backends.vllm import finish_reason

    assert finish_reason("length", 32768, 32768) == "length"
    assert finish_reason("length", 1200, 32768) == "context"
    assert finish_reason("stop", 1200, 32768) == "stop"


# ---- the stage refuses before generating; metrics count context stops as incomplete --------------
def test_stage_refuses_a_budget_the_tiny_model_cannot_hold(tiny_model, shared_data, tmp_path):
    from valley.generate.stage import run_generate
    from valley.storage import Storage

    short = _short_window_copy(tiny_model, tmp_path, 64)
    cfg = GenerateConfig(name="ctx", model=short, problems=[str(shared_data / "lcb" / "refined_test6.jsonl")],
                         filters={"question_ids": ["abc387_a"]}, max_tokens=16, pool={"mode": "local"})
    with pytest.raises(ConfigError, match=r"max_tokens=16 plus the longest prompt \(\d+ tokens, problem abc387_a\)"):
        run_generate(cfg, Storage(str(tmp_path / "store")))
    assert not list((tmp_path / "store").rglob("part-*.parquet"))


def test_context_stop_counts_as_incomplete():
    from valley.metrics import join_run

    samples = pa.table({"question_id": ["q"] * 3, "sample_idx": [0, 1, 2], "response": ["a", "b", "c"],
                        "finish_reason": ["stop", "length", "context"], "n_tokens": [5, 10, 7]})
    verdicts = pa.table({"question_id": ["q"] * 3, "sample_idx": [0, 1, 2], "verdict": ["pass"] * 3})
    joined = join_run(samples, verdicts, pa.table({"question_id": ["q"]}), max_tokens=10)
    assert joined.samples.sort("sample_idx")["completed"].to_list() == [True, False, False]
