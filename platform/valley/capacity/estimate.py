"""`valley plan`: what an experiment spec will cost before it runs — memory per rank, tokens, FLOPs, GPU-hours.

For every training run the spec implies (the same runs as experiment.plan_and_train: RQ1 sizes from the
instruct model, RQ2/RQ3 subsets from it and from the stage-2 checkpoint), the plan gives the per-rank
memory (capacity/memory.py) against the GPU's, the knob that makes a run fit when it does not, tokens per
epoch (from the data manifests when the data stage has run, else sampled from the corpus, else an assumed
length), training FLOPs (train/flops.py) and GPU-hours at an assumed MFU; for every evaluation, the tokens
to generate and GPU-hours at an assumed decode rate; and the study's totals. Every assumption is a flag
and is printed with the numbers it produced.
"""

from __future__ import annotations

import glob
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from valley.capacity.assumptions import Assumptions
from valley.capacity.cluster import GpuNode
from valley.capacity.memory import GIB, ModelShape, RankMemory, packed_length, rank_memory, resolve_attn
from valley.experiment.graph import StudyGraph, plan_study, train_config
from valley.train.config import TrainConfig
from valley.train.flops import PEAK_BF16_TFLOPS, train_flops

# Published configs of the students and their siblings, for when the model directory is not readable
# here (planning on a laptop for a cluster whose /models it cannot see).
KNOWN_SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, model_type="qwen2"),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, model_type="qwen2"),
    "qwen2.5-3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                       num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, model_type="qwen2"),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False, model_type="qwen2"),
    "qwen2.5-14b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=48, num_attention_heads=40,
                        num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False, model_type="qwen2"),
    "qwen2.5-32b": dict(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40,
                        num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False, model_type="qwen2"),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, model_type="llama"),
    "llama-3.1-70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                          num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, model_type="llama"),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True,
                         model_type="llama"),
    "llama-3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                         num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=True,
                         model_type="llama"),
}

LCB_RELEASE_PROBLEMS = {"release_v1": 400, "release_v2": 511, "release_v3": 612, "release_v4": 713,
                        "release_v5": 880, "release_v6": 1055}


@dataclass
class TrainEstimate:
    student: str
    run: str
    subset: str
    traces: int
    tokens_per_epoch: int
    tokens_source: str  # manifest | corpus-sample | assumed
    epochs: int
    steps: int
    gpus: int
    nodes: int
    flops: float
    gpu_hours: float
    wall_hours: float
    memory: dict[str, Any]
    memory_gib: float
    usable_gib: float
    headroom_gib: float
    fits: bool
    fix: dict[str, Any] | None = None


@dataclass
class EvalEstimate:
    run: str
    problems: int
    samples: int
    expected_tokens: float
    length_source: str  # previous-run | budget
    tokens: float
    gpu_hours: float


@dataclass
class StudyEstimate:
    experiment: str
    node: dict[str, Any]
    assumptions: dict[str, Any]
    train: list[TrainEstimate] = field(default_factory=list)
    evaluate: list[EvalEstimate] = field(default_factory=list)
    totals: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def all_fit(self) -> bool:
        return all(t.fits for t in self.train)

    def as_dict(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "node": self.node, "assumptions": self.assumptions,
                "train": [asdict(t) for t in self.train], "evaluate": [asdict(e) for e in self.evaluate],
                "totals": self.totals, "all_fit": self.all_fit, "notes": self.notes}


# ---------------------------------------------------------------- the runs of a spec


@dataclass
class TrainRun:
    student: Any
    tag: str
    subset: str
    traces: int


def train_runs(spec: Any, graph: StudyGraph) -> list[TrainRun]:
    """The study's training runs, in the order of its graph (`experiment.plan_study`)."""
    students = {s.name: s for s in spec.students}
    return [TrainRun(students[n.student], n.name.removeprefix(f"{spec.experiment}-{n.student}-"),
                     n.params["subset"], n.params["size"])
            for n in graph.nodes if n.kind == "train"]


def eval_runs(graph: StudyGraph) -> list[str]:
    """Ids of the evaluations that generate (aliases — epoch 0 and the final epoch — reuse another's)."""
    return [r.run_id for r in graph.runs if r.alias_of is None]


# ---------------------------------------------------------------- inputs: shapes, tokens, problems


def model_shape(student: Any) -> tuple[ModelShape, str]:
    """The student's shape from its config.json, else from KNOWN_SHAPES by name."""
    cfg_path = Path(student.model) / "config.json"
    if cfg_path.is_file():
        return ModelShape.from_config(json.loads(cfg_path.read_text())), str(cfg_path)
    for text in (student.name, Path(student.model).name):
        key = text.lower().replace("_", "-").replace("qwen2_5", "qwen2.5")
        for name, shape in sorted(KNOWN_SHAPES.items(), key=lambda kv: -len(kv[0])):
            if name in key or name.replace("-", "") in key.replace("-", ""):
                return ModelShape.from_config(shape), f"known shape {name}"
    from valley.errors import ConfigError

    raise ConfigError(f"student {student.name!r}: {cfg_path} is not readable here and the name matches none of "
                      f"{sorted(KNOWN_SHAPES)}; plan where the model directory is visible")


def manifest_subsets(storage_root: str | None, experiment: str, student: str) -> dict[str, dict[str, Any]]:
    """Subset summaries of finished data-stage runs of this experiment and student, newest last."""
    if not storage_root or "://" in storage_root:
        return {}
    out: dict[str, dict[str, Any]] = {}
    pattern = str(Path(storage_root) / "data" / f"{experiment}-{student}-*" / "manifest.json")
    for path in sorted(glob.glob(pattern), key=lambda p: Path(p).stat().st_mtime):
        if not (Path(path).parent / "_SUCCESS").exists():
            continue
        manifest = json.loads(Path(path).read_text())
        out.update(manifest.get("subsets", {}))
    return out


def corpus_tokens_per_trace(spec: Any, student: Any, sample_rows: int = 400) -> float | None:
    """Mean tokens of a trace (question + response), from a sample of the first readable input file,
    counted with the student's tokenizer when it loads here, else at 3.6 characters per token."""
    from valley.data.columns import resolve
    from valley.data.config import ColumnMapping

    files = [f for pat in spec.data.get("inputs", []) for f in sorted(glob.glob(pat))]
    if not files:
        return None
    mapping = resolve(ColumnMapping(**(spec.data.get("columns") or {})))
    q_col, r_col = mapping.get("question"), mapping.get("response")
    path = files[0]
    rows: list[dict[str, Any]] = []
    if path.endswith((".jsonl", ".json")):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    rows.append(json.loads(line))
                if len(rows) >= sample_rows:
                    break
    elif path.endswith(".parquet"):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        cols = [c for c in (q_col, r_col) if c and c in pf.schema_arrow.names]
        rows = next(pf.iter_batches(batch_size=sample_rows, columns=cols)).to_pylist()
    texts = [f"{r.get(q_col) or ''}\n{r.get(r_col) or ''}" for r in rows if isinstance(r, dict)]
    texts = [t for t in texts if t.strip()]
    if not texts:
        return None
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(student.tokenizer or student.model)
        counts = [len(tok(t).input_ids) for t in texts]
    except Exception:  # noqa: BLE001 - no tokenizer here: fall back to a characters-per-token rule
        counts = [len(t) / 3.6 for t in texts]
    return sum(counts) / len(counts) + 30.0  # + the chat template's special tokens and role headers


def count_problems(spec: Any, assumed: int | None) -> tuple[int, str]:
    if assumed:
        return assumed, "flag"
    files = [f for pat in spec.generate.get("problems", []) for f in sorted(glob.glob(pat))]
    n = 0
    for f in files:
        if f.endswith(".jsonl"):
            with open(f, encoding="utf-8") as fh:
                n += sum(1 for line in fh if line.strip())
        elif f.endswith(".parquet"):
            import pyarrow.parquet as pq

            n += pq.ParquetFile(f).metadata.num_rows
    if n:
        return n, "counted (before filters)"
    release = (spec.generate.get("filters") or {}).get("release_version", "release_v6")
    return LCB_RELEASE_PROBLEMS.get(release, 1055), f"LiveCodeBench {release} size"


def previous_response_tokens(storage_root: str | None, experiment: str) -> float | None:
    """Mean generated tokens over this experiment's finished generate runs, if any."""
    if not storage_root or "://" in storage_root:
        return None
    import pyarrow.parquet as pq

    total, n = 0.0, 0
    for run_dir in glob.glob(str(Path(storage_root) / "generate" / f"{experiment}-*")):
        for part in glob.glob(str(Path(run_dir) / "samples" / "*.parquet")):
            try:
                col = pq.read_table(part, columns=["n_tokens"]).column("n_tokens").to_pylist()
            except Exception:  # noqa: BLE001 - a foreign file in the dir: skip it
                continue
            total += sum(x or 0 for x in col)
            n += len(col)
    return total / n if n else None


# ---------------------------------------------------------------- memory fit and its fixes


def fix_for(shape: ModelShape, cfg: TrainConfig, world: int, node: GpuNode, usable: int) -> dict[str, Any]:
    """The cheapest change that brings the run under `usable`: first one knob, in order of least cost to
    throughput (attention path, checkpointing, micro batch, loss chunk, optimizer offload), then both
    offloads, then the longest sequence length that fits with them. `set` maps `train.<field>` to values."""
    def total(update: dict[str, Any]) -> int:
        return rank_memory(shape, cfg.model_copy(update=update), world, gpus_per_node=node.gpus_per_node).total

    def found(update: dict[str, Any]) -> dict[str, Any]:
        return {"set": {f"train.{k}": v for k, v in update.items()}, "memory_gib": round(total(update) / GIB, 1)}

    candidates: list[dict[str, Any]] = []
    if resolve_attn(cfg, "gpu") in ("sdpa", "eager"):
        candidates.append({"attn_implementation": "flex_attention"})
    if not cfg.gradient_checkpointing:
        candidates.append({"gradient_checkpointing": True})
    if cfg.micro_batch_size > 1:
        candidates.append({"micro_batch_size": 1})
    if cfg.loss_chunk_tokens > 1024:
        candidates.append({"loss_chunk_tokens": 1024})
    candidates += [{"offload_optimizer": True}, {"offload_optimizer": True, "offload_params": True}]
    for update in candidates:
        if total(update) <= usable:
            return found(update)
    lean = {k: v for c in candidates for k, v in c.items()}  # every knob at once
    seq = packed_length(cfg)
    while seq > 1024:
        seq //= 2
        if total({**lean, "max_seq_len": seq}) <= usable:
            return found({**lean, "max_seq_len": seq})  # data.max_seq_len must follow
    return {"set": {"train.num_workers": "more GPUs, or a larger device"}, "memory_gib": None}


# ---------------------------------------------------------------- the plan


def estimate_study(spec: Any, node: GpuNode, assumptions: Assumptions | None = None,
               storage_root: str | None = None) -> StudyEstimate:
    """The whole study's plan (pure apart from reading configs, manifests, samples and a corpus sample)."""
    a = assumptions or Assumptions()
    plan = StudyEstimate(experiment=spec.experiment, node=asdict(node), assumptions=asdict(a))
    base_cfg = train_config(spec)
    world = base_cfg.num_workers
    nodes = math.ceil(world / node.gpus_per_node)
    peak = PEAK_BF16_TFLOPS.get(node.gpu_name, PEAK_BF16_TFLOPS["H100"]) * 1e12
    usable = int(node.gpu_mem_gib * GIB * (1 - a.reserve_fraction))
    shapes: dict[str, ModelShape] = {}
    per_trace_cache: dict[str, tuple[float, str]] = {}
    graph = plan_study(spec)
    for run in train_runs(spec, graph):
        student = run.student
        if student.name not in shapes:
            shapes[student.name], where = model_shape(student)
            plan.notes.append(f"{student.name}: shape from {where} ({shapes[student.name].total_params / 1e9:.2f}B "
                              "parameters)")
        shape = shapes[student.name]
        subsets = manifest_subsets(storage_root, spec.experiment, student.name)
        name = run.subset
        if name in subsets and subsets[name].get("tokens"):
            s = subsets[name]
            tokens, loss_tokens, docs = int(s["tokens"]), int(s.get("loss_tokens") or 0), int(s.get("docs") or 1)
            eff = float(s.get("pack_efficiency") or a.pack_efficiency)
            source = "manifest"
        else:
            if student.name not in per_trace_cache:
                sampled = corpus_tokens_per_trace(spec, student)
                per_trace_cache[student.name] = ((sampled, "corpus-sample") if sampled
                                                 else (a.tokens_per_trace, "assumed"))
            per_trace, source = per_trace_cache[student.name]
            tokens = int(run.traces * per_trace)
            loss_tokens, docs, eff = int(tokens * a.loss_token_fraction), run.traces, a.pack_efficiency
        rows = math.ceil(tokens / (packed_length(base_cfg) * eff))
        steps = max(rows // base_cfg.global_batch_size, 1) * base_cfg.epochs
        mean_doc = max(tokens / max(docs, 1), 1.0)
        # documents of the mean length: attention's n² term is slightly under-counted for a spread of lengths
        per_epoch = (train_flops(shape.as_config(), [int(mean_doc)], head_tokens=int(loss_tokens / max(docs, 1)))
                     * docs)
        flops = per_epoch * base_cfg.epochs
        gpu_hours = flops / (peak * a.mfu) / 3600
        mem = rank_memory(shape, base_cfg, world, gpus_per_node=node.gpus_per_node,
                          trained_fraction=min(1.0, loss_tokens / max(tokens, 1)) if source == "manifest" else 1.0)
        fits = mem.total <= usable
        plan.train.append(TrainEstimate(
            student=student.name, run=f"{student.name}-{run.tag}", subset=run.subset, traces=run.traces,
            tokens_per_epoch=tokens, tokens_source=source, epochs=base_cfg.epochs, steps=steps, gpus=world,
            nodes=nodes, flops=flops, gpu_hours=gpu_hours, wall_hours=gpu_hours / world,
            memory={k: v for k, v in _gib(mem).items()}, memory_gib=round(mem.total / GIB, 2),
            usable_gib=round(usable / GIB, 2), headroom_gib=round((usable - mem.total) / GIB, 2), fits=fits,
            fix=None if fits else fix_for(shape, base_cfg, world, node, usable)))
    problems, problems_source = count_problems(spec, a.problems)
    n = int(spec.generate.get("n", 1))
    budget = int(spec.generate.get("max_tokens", 32768))
    previous = previous_response_tokens(storage_root, spec.experiment)
    expected, length_source = (previous, "previous-run") if previous else (float(budget), "budget")
    plan.notes.append(f"problems per evaluation: {problems} ({problems_source})")
    for run_id in eval_runs(graph):
        tokens = problems * n * expected
        plan.evaluate.append(EvalEstimate(run=run_id, problems=problems, samples=problems * n, expected_tokens=expected,
                                      length_source=length_source, tokens=tokens,
                                      gpu_hours=tokens / a.gen_tokens_per_s / 3600))
    train_h = sum(t.gpu_hours for t in plan.train)
    gen_h = sum(e.gpu_hours for e in plan.evaluate)
    plan.totals = {"train_runs": len(plan.train), "evaluations": len(plan.evaluate),
                   "train_flops": sum(t.flops for t in plan.train), "train_gpu_hours": round(train_h, 1),
                   "generate_tokens": sum(e.tokens for e in plan.evaluate), "generate_gpu_hours": round(gen_h, 1),
                   "gpu_hours": round(train_h + gen_h, 1), "runs_that_do_not_fit": sum(not t.fits for t in plan.train)}
    return plan


def _gib(mem: RankMemory) -> dict[str, float | None]:
    return {k: (round(v / GIB, 2) if isinstance(v, int) else v) for k, v in mem.as_dict().items()}


def estimate_spec_file(path: str, overrides: list[str] | None = None, *, node: GpuNode,
                   assumptions: Assumptions | None = None, storage_root: str | None = None) -> StudyEstimate:
    """Load an experiment spec as `valley run` does and plan it."""
    from valley.experiment import load_spec

    return estimate_study(load_spec(path, overrides or []), node, assumptions, storage_root)
