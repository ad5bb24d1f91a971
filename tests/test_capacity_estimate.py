"""`valley plan`: per-rank memory, tokens, FLOPs and GPU-hours of the paper's and the demo's studies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from valley.capacity.cluster import GpuNode, gpu_node_from_cluster
from valley.capacity.estimate import KNOWN_SHAPES, Assumptions, estimate_spec_file
from valley.capacity.memory import GIB, ModelShape, deepspeed_estimate, rank_memory
from valley.capacity.render import render_plan
from valley.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
PAPER = str(ROOT / "jobs" / "configs" / "paper.yaml")
DEMO = str(ROOT / "jobs" / "configs" / "demo-full.yaml")
H100 = GpuNode("test", 8, "H100", 79.6)


def test_cluster_file_gives_eight_h100s():
    node = gpu_node_from_cluster(ROOT / "ray_cluster.yaml")
    assert (node.node_type, node.gpus_per_node, node.gpu_name, node.gpu_mem_gib) == ("gpu_h100", 8, "H100", 79.6)


@pytest.mark.parametrize(("name", "billions"), [("qwen2.5-7b", 7.62), ("llama-3.1-8b", 8.03), ("qwen2.5-0.5b", 0.494)])
def test_parameter_counts_match_the_published_sizes(name, billions):
    assert ModelShape.from_config(KNOWN_SHAPES[name]).total_params / 1e9 == pytest.approx(billions, abs=0.01)


def test_parameter_count_equals_a_real_model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    # its own shape, not the tiny test students: 3 layers and untied embeddings exercise every count
    config = Qwen2Config(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=300, tie_word_embeddings=False)
    model = Qwen2ForCausalLM(config)
    shape = ModelShape.from_config(config.to_dict())
    assert shape.total_params == sum(p.numel() for p in model.parameters())
    assert shape.largest_layer_params == max(sum(p.numel() for p in m.parameters(recurse=False))
                                             for m in model.modules())


def test_model_states_agree_with_deepspeeds_estimator():
    """bf16 ZeRO-3: params 2 + fp32 grads 4 + master and Adam 12 bytes per parameter over the ranks, plus
    the largest layer, is DeepSpeed's own `estimate_zero3_model_states_mem_needs`."""
    shape = ModelShape.from_config(KNOWN_SHAPES["qwen2.5-7b"])
    cfg = TrainConfig(data="-", model="-", use_gpu=True, num_workers=8)
    mem = rank_memory(shape, cfg, 8)
    assert mem.deepspeed_estimate == deepspeed_estimate(shape, 8, 8, False, False)
    assert mem.model_states == pytest.approx(mem.deepspeed_estimate, rel=0.01)
    offloaded = rank_memory(shape, cfg.model_copy(update={"offload_optimizer": True}), 8)
    assert offloaded.deepspeed_estimate < mem.deepspeed_estimate / 4 and offloaded.host_offloaded > 0


def test_attention_mask_memory_flash_and_flex_vs_sdpa():
    shape = ModelShape.from_config(KNOWN_SHAPES["qwen2.5-7b"])
    cfg = TrainConfig(data="-", model="-", use_gpu=True, num_workers=8, max_seq_len=32768)
    masks = {a: rank_memory(shape, cfg, 8, attn=a).attention_mask for a in
             ("sdpa", "flex_attention", "flash_attention_2")}
    assert masks["sdpa"] == 32768 ** 2 * 3  # bf16 additive mask + the boolean it is built from
    assert masks["flex_attention"] < 2 * 1024 ** 2 and masks["flash_attention_2"] < 1024 ** 2
    eager = rank_memory(shape, cfg, 8, attn="eager")
    assert eager.attention_scores > 100 * GIB  # 28 heads × 32K² scores: why eager cannot run at 32K


def test_paper_plan_fits_80gb_with_the_papers_settings(capsys):
    plan = estimate_spec_file(PAPER, node=H100)
    assert len(plan.train) == 24  # 2 students × (4 sizes + 4 subsets × 2 starting points)
    assert {t.student for t in plan.train} == {"qwen2.5-7b-instruct", "llama3.1-8b-instruct"}
    for t in plan.train:
        assert t.fits, (t.run, t.memory_gib)
        assert 30 < t.memory_gib < 80 and t.headroom_gib > 0
        assert t.memory["attention_mask"] < 0.01  # FlashAttention-2 / Flex: no O(L²) mask
        assert t.gpus == 8 and t.nodes == 1 and t.tokens_source == "assumed"
    r100k = next(t for t in plan.train if t.run == "qwen2.5-7b-instruct-r100000")
    r1k = next(t for t in plan.train if t.run == "qwen2.5-7b-instruct-r1000")
    assert r100k.gpu_hours == pytest.approx(100 * r1k.gpu_hours, rel=0.01)
    # 6 × params × tokens is the usual rule of thumb; attention and the head make ours a little larger
    rough = 6 * 7.62e9 * r100k.tokens_per_epoch * 5
    assert 0.9 < r100k.flops / rough < 1.6
    assert len(plan.evaluate) == 26  # base + 12 trained runs per student
    assert plan.evaluate[0].expected_tokens == 32768 and plan.evaluate[0].problems == 1055
    totals = plan.totals
    assert totals["gpu_hours"] == pytest.approx(totals["train_gpu_hours"] + totals["generate_gpu_hours"], abs=0.2)
    assert totals["runs_that_do_not_fit"] == 0
    text = render_plan(plan)
    assert "Totals: 24 training runs" in text and "study" in text and "NO FIT" not in text
    json.dumps(plan.as_dict())  # the JSON form serialises


@pytest.mark.parametrize(("override", "knob"), [
    ("train.attn_implementation=eager", "train.attn_implementation"),
    ("train.gradient_checkpointing=false", "train.gradient_checkpointing"),
])
def test_a_run_that_cannot_fit_is_flagged_with_its_fix(override, knob):
    plan = estimate_spec_file(PAPER, [override], node=H100)
    assert not plan.all_fit and plan.totals["runs_that_do_not_fit"] == 24
    fix = plan.train[0].fix
    assert list(fix["set"]) == [knob] and fix["memory_gib"] < plan.train[0].usable_gib
    assert f"set {knob}=" in render_plan(plan)


def test_small_gpus_are_fixed_by_offloading_then_shorter_rows():
    plan = estimate_spec_file(PAPER, node=GpuNode("small", 8, "L40S", 44.4))
    assert not plan.all_fit
    assert {tuple(t.fix["set"]) for t in plan.train} == {("train.loss_chunk_tokens",), ("train.offload_optimizer",)} \
        or all("train.offload_optimizer" in t.fix["set"] for t in plan.train)
    tiny = estimate_spec_file(PAPER, node=GpuNode("tiny", 8, "A10G", 22.0))
    fix = tiny.train[0].fix["set"]
    assert fix["train.offload_optimizer"] is True and fix["train.max_seq_len"] < 32768


def test_cli_plan_json_and_run_plan_gate(tmp_path, capsys):
    from valley.cli import main

    out = tmp_path / "plan.json"
    assert main(["plan", PAPER, "--json", "--plan-json", str(out), "--mfu", "0.5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["assumptions"]["mfu"] == 0.5 and printed["all_fit"]
    power = printed["power"]["comparisons"]  # the power table comes along, one row per comparison
    assert {r["comparison"] for r in power} == {"valley: random vs base", "RQ2: trace correctness",
                                                 "RQ3: question difficulty"}
    assert all(0 < r["detectable_models"] < r["detectable_recipes"] for r in power)
    # `valley run --plan` prints the plan and stops before any work when a run cannot fit
    code = main(["run", PAPER, "--plan", "--set", "train.attn_implementation=eager", "--storage", str(tmp_path)])
    assert code == 3
    assert "NO FIT" in capsys.readouterr().out
    assert not (tmp_path / "data").exists()


def test_demo_plan_reads_the_corpus_then_the_manifests(tmp_path, monkeypatch):
    """Before the data stage: tokens per trace sampled from the corpus with the student's tokenizer; after
    it: the manifest's exact token counts."""
    from valley.demo import write_demo

    monkeypatch.chdir(tmp_path)
    write_demo("demo-data", n_traces=200, n_problems=6)
    shutil.copytree("demo-data/model", "demo-data/student")  # the instruct stage's export, untrained here
    plan = estimate_spec_file(DEMO, node=H100, assumptions=Assumptions(), storage_root=str(tmp_path / "runs"))
    assert len(plan.train) == 4 + 2 + 4 * 2  # r100 has three seeds
    assert all(t.tokens_source == "corpus-sample" for t in plan.train)
    r100 = next(t for t in plan.train if t.subset == "r100")
    assert 50 * 100 < r100.tokens_per_epoch < 2000 * 100
    assert plan.evaluate[0].problems == 6 and plan.all_fit
    assert sum(e.run.endswith("-e1") for e in plan.evaluate) == 6  # per_epoch_eval: [random], 2 epochs, 3 seeds at 100

    data_dir = tmp_path / "runs" / "data" / "valley-demo-full-tiny-qwen2-0123456789ab"
    data_dir.mkdir(parents=True)
    (data_dir / "manifest.json").write_text(json.dumps({"subsets": {"r100": {
        "rows": 100, "docs": 100, "sequences": 40, "tokens": 40000, "loss_tokens": 30000, "pack_efficiency": 0.98}}}))
    (data_dir / "_SUCCESS").write_text("{}")
    plan = estimate_spec_file(DEMO, node=H100, storage_root=str(tmp_path / "runs"))
    r100 = next(t for t in plan.train if t.subset == "r100")
    assert (r100.tokens_per_epoch, r100.tokens_source) == (40000, "manifest")


def test_gathered_parameters_follow_the_reuse_distance():
    """ZeRO-3 keeps a module's parameters gathered when they recur within stage3_max_reuse_distance
    elements: a model smaller than that stays gathered through the backward; a 7B's layers do not."""
    from valley.capacity.memory import fetch_trace, gathered_peak

    small = ModelShape.from_config(KNOWN_SHAPES["qwen2.5-0.5b"])
    trace = fetch_trace(small, 1, True, 0)
    assert gathered_peak(trace, 10 ** 10, 0, 10 ** 10) == small.total_params  # tied head: counted once
    assert gathered_peak(trace, 0, 0, 10 ** 10) == small.embedding_params  # only the module in use
    # the prefetcher holds what it walks past: a short reuse distance still keeps a small model gathered
    assert gathered_peak(trace, 10 ** 6, 5 * 10 ** 7, 10 ** 10) == small.total_params
    big = ModelShape.from_config(KNOWN_SHAPES["qwen2.5-7b"])
    peak = gathered_peak(fetch_trace(big, 8, True, 10 ** 6), 10 ** 9, 5 * 10 ** 8, 10 ** 9)
    assert big.embedding_params < peak < 0.25 * big.total_params  # the head and a few layers, not the model


def test_host_heap_slack_is_counted_on_cpu_only():
    """glibc keeps freed heap pages (tensors under the mmap threshold CPU training pins, 4 MiB): the checkpoint
    load's on CPU for the whole run, the backward's activations during the step; the GPU plan has neither."""
    from valley.capacity.memory import heap_slack_bytes
    from valley.train.host_memory import MMAP_THRESHOLD

    assert MMAP_THRESHOLD == 4 * 1024 ** 2
    shape = ModelShape.from_config(KNOWN_SHAPES["qwen2.5-0.5b"])
    cpu = rank_memory(shape, TrainConfig(data="-", model="-", num_workers=2, global_batch_size=2, max_seq_len=1024),
                      2, device="cpu")
    # in fp32 the attention projections (896 x 896: 3.2 MB), biases and norms are under 4 MiB; the MLP's
    # 896 x 4,864 matrices (17 MB) and the 544 MB embedding are mmapped
    mlp = 3 * shape.hidden * shape.intermediate
    assert cpu.heap_slack == heap_slack_bytes(shape, 4) == 2 * 4 * (shape.layers * (shape.layer_params - mlp) + shape.hidden)
    assert cpu.optimizer_phase == cpu.optimizer_step + cpu.activations
    assert cpu.persistent == cpu.params + cpu.grads + cpu.optimizer + cpu.zero_buffers + cpu.heap_slack
    gpu = rank_memory(shape, TrainConfig(data="-", model="-", use_gpu=True, num_workers=8), 8)
    assert gpu.heap_slack == gpu.activation_heap_slack == 0 and gpu.optimizer_phase == gpu.optimizer_step


def test_cpu_training_processes_pin_glibc_mmap_threshold():
    """The plan's CPU heap terms assume train/host_memory.py's fixed threshold is in force (glibc only)."""
    import platform

    from valley.train.host_memory import pin_mmap_threshold

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert pin_mmap_threshold()
