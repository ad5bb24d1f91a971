"""`valley plan`: what an experiment spec will cost before it runs — memory per rank, tokens, FLOPs, GPU-hours.

For every training run the spec implies (the same runs as experiment.plan_and_train: RQ1 sizes from the
instruct model, RQ2/RQ3 subsets from it and from the stage-2 checkpoint), the plan gives the per-rank
memory (capacity/memory.py) against the GPU's, the knob that makes a run fit when it does not, tokens per
epoch (from the data manifests when the data stage has run, else sampled from the corpus, else an assumed
length), its optimizer steps in its batch unit (train/step_arithmetic.py, the trainer's own arithmetic),
training FLOPs (train/flops.py) and GPU-hours at an assumed MFU; for every evaluation, the tokens
to generate and GPU-hours at an assumed decode rate; and the study's totals. Every assumption is a flag
and is printed with the numbers it produced.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from valley.capacity.assumptions import Assumptions
from valley.capacity.cluster import GpuNode
from valley.capacity.memory import GIB, ModelShape, RankMemory, packed_length, rank_memory, resolve_attn
from valley.capacity.schedule import ScheduleEstimate, predict_schedule, stage_work
from valley.experiment.graph import StudyGraph, plan_study
from valley.manifest import MANIFEST, Manifest, SubsetSummary
from valley.storage import SUCCESS, Storage
from valley.train.config import TrainConfig
from valley.train.flops import PEAK_BF16_TFLOPS, train_flops
from valley.train.step_arithmetic import StepCounts, packed_rows, step_counts

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
    batch_unit: str  # what global_batch_size counts: rows | examples
    steps_per_epoch: int
    examples_per_step: float  # mean over an epoch's steps
    tokens_per_step: float  # mean over an epoch's steps
    last_step_size: int  # rows or examples in each epoch's smaller last step (last_step: partial); 0: none
    left_over_per_epoch: int  # rows or examples an epoch does not train (last_step: drop)
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
    schedule: ScheduleEstimate | None = None  # the predicted wall-clock on the cluster (capacity/schedule.py)

    @property
    def all_fit(self) -> bool:
        return all(t.fits for t in self.train)

    def as_dict(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "node": self.node, "assumptions": self.assumptions,
                "train": [asdict(t) for t in self.train], "evaluate": [asdict(e) for e in self.evaluate],
                "totals": self.totals, "all_fit": self.all_fit, "notes": self.notes,
                "schedule": self.schedule.as_dict() if self.schedule is not None else None}


# ---------------------------------------------------------------- the runs of a spec


@dataclass
class TrainRun:
    student: Any
    tag: str
    subset: str
    traces: int
    arm: str | None = None  # its arm's train overrides (epochs, batch, workers) apply


def train_runs(spec: Any, graph: StudyGraph) -> list[TrainRun]:
    """The study's training runs, in the order of its graph (`experiment.plan_study`)."""
    students = {s.name: s for s in spec.students}
    return [TrainRun(students[n.student], n.params.tag, n.params.subset, n.params.size,  # type: ignore[union-attr]
                     n.params.arm)  # type: ignore[union-attr]
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


def finished_runs(storage: Storage, stage: str, names: Iterable[str]) -> list[str]:
    """Stage directories (root-relative) of finished runs of `stage` whose config name is one of `names`,
    oldest first: `<stage>/<name>-<12 hex>` with a `_SUCCESS` marker."""
    wanted = set(names)
    found = []
    for entry in storage.list_dirs(stage):
        name, _, digest = entry.rpartition("-")
        if name in wanted and len(digest) == 12 and storage.exists(stage, entry, SUCCESS):
            found.append((storage.modified(stage, entry, SUCCESS), f"{stage}/{entry}"))
    return [path for _, path in sorted(found)]


def manifest_subsets(storage: Storage | None, graph: StudyGraph, student: str) -> dict[str, SubsetSummary]:
    """Subset summaries of the student's finished data runs in this study (newest wins)."""
    if storage is None:
        return {}
    names = [n.name for n in graph.nodes if n.kind == "data" and n.student == student]
    out: dict[str, SubsetSummary] = {}
    for run_dir in finished_runs(storage, "data", names):
        if storage.exists(run_dir, MANIFEST):
            out.update(Manifest.read(storage, run_dir).subsets)
    return out


def corpus_tokens_per_trace(spec: Any, student: Any, sample_rows: int = 400) -> float | None:
    """Mean tokens of a trace (question + response), from a sample of the first readable input file (any
    URI the data stage reads), counted with the student's tokenizer when it loads here, else at 3.6
    characters per token."""
    from valley.data.columns import resolve
    from valley.data.config import ColumnMapping
    from valley.data.readers import expand_inputs, head_rows
    from valley.errors import InputError

    data = spec.section("data")
    try:
        files = expand_inputs(list(data.get("inputs") or []))
    except InputError:
        return None
    if not files:
        return None
    mapping = resolve(ColumnMapping(**(data.get("columns") or {})))
    q_col, r_col = mapping.get("question"), mapping.get("response")
    rows = [row for row in head_rows(files[0], sample_rows) if isinstance(row, dict)]
    texts = [t for r in rows if (t := f"{r.get(q_col) or ''}\n{r.get(r_col) or ''}").strip()]
    if not texts:
        return None
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(student.tokenizer or student.model)
        counts = [len(tok(t).input_ids) for t in texts]
    except Exception:  # noqa: BLE001 - no tokenizer here: fall back to a characters-per-token rule
        counts = [len(t) / 3.6 for t in texts]
    return sum(counts) / len(counts) + 30.0  # + the chat template's special tokens and role headers


def count_problems(generate: Any, assumed: int | None) -> tuple[int, str]:
    """Problems one evaluation generates for: the flag, else those the generate stage's own selection keeps
    (its files and filters), else the size of the LCB release the filters name."""
    if assumed:
        return assumed, "flag"
    from valley.errors import InputError
    from valley.generate.selection import load_problems

    try:
        selection = load_problems(list(generate.problems), generate.filters, generate.problem_metadata)
    except (InputError, OSError):
        selection = None
    if selection is not None and selection.problems:
        return len(selection.problems), "selected (files and filters of the generate section)"
    release = generate.filters.release_version or "release_v6"
    return LCB_RELEASE_PROBLEMS.get(release, 1055), f"LiveCodeBench {release} size"


def previous_response_tokens(storage: Storage | None, graph: StudyGraph) -> float | None:
    """Mean generated tokens over this study's finished generate runs, if any."""
    if storage is None:
        return None
    from valley.generate.writer import SAMPLES_DIR

    names = [n.name for n in graph.nodes if n.kind == "generate"]
    total, n = 0.0, 0
    for run_dir in finished_runs(storage, "generate", names):
        if not storage.list(run_dir, SAMPLES_DIR, suffix=".parquet"):
            continue
        col = storage.read_parquet(run_dir, SAMPLES_DIR, columns=["n_tokens"]).column("n_tokens").to_pylist()
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


@dataclass
class _Cluster:
    """The GPU node every training run lands on: its bf16 peak and the memory a rank may use."""

    node: GpuNode
    peak_flops: float
    usable: int


def _cluster(node: GpuNode, a: Assumptions) -> _Cluster:
    return _Cluster(node, PEAK_BF16_TFLOPS.get(node.gpu_name, PEAK_BF16_TFLOPS["H100"]) * 1e12,
                    int(node.gpu_mem_gib * GIB * (1 - a.reserve_fraction)))


@dataclass
class _RunTokens:
    tokens: int
    loss_tokens: int
    docs: int
    pack_efficiency: float
    source: str  # manifest | corpus-sample | assumed


def _run_tokens(run: TrainRun, subsets: dict[str, SubsetSummary], per_trace: tuple[float, str],
                a: Assumptions) -> _RunTokens:
    """Tokens of one epoch of a run: the data manifest's counts when the data stage has run, else traces ×
    the sampled (or assumed) tokens per trace."""
    found = subsets.get(run.subset)
    if found is not None and found.tokens:
        return _RunTokens(found.tokens, found.loss_tokens, found.docs or 1, found.pack_efficiency or a.pack_efficiency,
                          "manifest")
    tokens = int(run.traces * per_trace[0])
    return _RunTokens(tokens, int(tokens * a.loss_token_fraction), run.traces, a.pack_efficiency, per_trace[1])


def run_steps(cfg: TrainConfig, counted: _RunTokens) -> StepCounts:
    """A run's steps per epoch by the trainer's arithmetic: rows from its tokens at the packing rate,
    examples from its documents."""
    rows = packed_rows(counted.tokens, packed_length(cfg), counted.pack_efficiency)
    return step_counts(cfg.resolved_batch_unit(), cfg.resolved_last_step(), rows=rows, examples=counted.docs,
                       global_batch=cfg.global_batch_size, micro=cfg.micro_batch_size, world=cfg.num_workers)


def _train_estimate(run: TrainRun, shape: ModelShape, counted: _RunTokens, c: _Cluster, a: Assumptions,
                    cfg: TrainConfig) -> TrainEstimate:
    """Steps, FLOPs, GPU-hours and per-rank memory of one training run (`cfg`: its arm's train config),
    with its fix when it does not fit."""
    world = cfg.num_workers
    counts = run_steps(cfg, counted)
    steps = counts.steps_per_epoch * cfg.epochs
    mean_doc = max(counted.tokens / max(counted.docs, 1), 1.0)
    # documents of the mean length: attention's n² term is slightly under-counted for a spread of lengths
    per_epoch = train_flops(shape.as_config(), [int(mean_doc)],
                            head_tokens=int(counted.loss_tokens / max(counted.docs, 1))) * counted.docs
    trained_share = counts.trained / counts.units if counts.units else 1.0  # what no step trains costs nothing
    flops = per_epoch * cfg.epochs * trained_share
    gpu_hours = flops / (c.peak_flops * a.mfu) / 3600
    trained = min(1.0, counted.loss_tokens / max(counted.tokens, 1)) if counted.source == "manifest" else 1.0
    mem = rank_memory(shape, cfg, world, gpus_per_node=c.node.gpus_per_node, trained_fraction=trained)
    fits = mem.total <= c.usable
    return TrainEstimate(
        student=run.student.name, run=f"{run.student.name}-{run.tag}", subset=run.subset, traces=run.traces,
        tokens_per_epoch=counted.tokens, tokens_source=counted.source, epochs=cfg.epochs, steps=steps,
        batch_unit=counts.unit, steps_per_epoch=counts.steps_per_epoch,
        examples_per_step=round(counts.mean_per_step() if counts.unit == "examples" else
                                counts.per_step_of(counted.docs), 1),
        tokens_per_step=round(counts.per_step_of(counted.tokens)), last_step_size=counts.last_step_units,
        left_over_per_epoch=counts.left_over,
        gpus=world, nodes=math.ceil(world / c.node.gpus_per_node), flops=flops, gpu_hours=gpu_hours,
        wall_hours=gpu_hours / world,
        memory=_gib(mem), memory_gib=round(mem.total / GIB, 2), usable_gib=round(c.usable / GIB, 2),
        headroom_gib=round((c.usable - mem.total) / GIB, 2), fits=fits,
        fix=None if fits else fix_for(shape, cfg, world, c.node, c.usable))


def _eval_estimates(spec: Any, graph: StudyGraph, storage: Storage | None, a: Assumptions,
                    notes: list[str]) -> list[EvalEstimate]:
    """Tokens to generate and GPU-hours per evaluation, with each student's and arm's own generate settings
    (`n`)."""
    previous = previous_response_tokens(storage, graph)
    runs = {r.run_id: r for r in graph.runs}
    out, counted, configs = [], {}, {}
    for run_id in eval_runs(graph):
        student, arm = runs[run_id].student, runs[run_id].arm
        if (student, arm) not in configs:
            configs[(student, arm)] = spec.arm_generate_config(arm, student)
        generate = configs[(student, arm)]
        if student not in counted:
            counted[student] = count_problems(generate, a.problems)
            notes.append(f"problems per evaluation of {student}: {counted[student][0]} ({counted[student][1]})")
        problems = counted[student][0]
        expected, length_source = ((previous, "previous-run") if previous else
                                   (float(generate.max_tokens), "budget"))
        tokens = problems * generate.n * expected
        out.append(EvalEstimate(run=run_id, problems=problems, samples=problems * generate.n,
                                expected_tokens=expected, length_source=length_source, tokens=tokens,
                                gpu_hours=tokens / a.gen_tokens_per_s / 3600))
    return out


def _totals(plan: StudyEstimate) -> dict[str, float]:
    train_h = sum(t.gpu_hours for t in plan.train)
    gen_h = sum(e.gpu_hours for e in plan.evaluate)
    return {"train_runs": len(plan.train), "evaluations": len(plan.evaluate),
            "train_flops": sum(t.flops for t in plan.train), "train_gpu_hours": round(train_h, 1),
            "generate_tokens": sum(e.tokens for e in plan.evaluate), "generate_gpu_hours": round(gen_h, 1),
            "gpu_hours": round(train_h + gen_h, 1), "runs_that_do_not_fit": sum(not t.fits for t in plan.train)}


def estimate_study(spec: Any, node: GpuNode, assumptions: Assumptions | None = None,
                   storage_root: str | None = None) -> StudyEstimate:
    """The whole study's estimate (pure apart from reading configs, manifests, samples and a corpus sample
    through the storage root, local or an object store)."""
    a = assumptions or Assumptions()
    plan = StudyEstimate(experiment=spec.experiment, node=asdict(node), assumptions=asdict(a))
    storage = _readable_storage(storage_root, plan.notes)
    c = _cluster(node, a)
    graph = plan_study(spec)
    train_cfgs: dict[str | None, TrainConfig] = {}
    shapes: dict[str, ModelShape] = {}
    per_trace: dict[str, tuple[float, str]] = {}
    subsets: dict[str, dict[str, SubsetSummary]] = {}
    for run in train_runs(spec, graph):
        name = run.student.name
        if name not in shapes:
            shapes[name], where = model_shape(run.student)
            plan.notes.append(f"{name}: shape from {where} ({shapes[name].total_params / 1e9:.2f}B parameters)")
            subsets[name] = manifest_subsets(storage, graph, name)
        if run.subset not in subsets[name] and name not in per_trace:
            sampled = corpus_tokens_per_trace(spec, run.student)
            per_trace[name] = (sampled, "corpus-sample") if sampled else (a.tokens_per_trace, "assumed")
        counted = _run_tokens(run, subsets[name], per_trace.get(name, (a.tokens_per_trace, "assumed")), a)
        if run.arm not in train_cfgs:
            train_cfgs[run.arm] = spec.arm_train_config(run.arm)
        plan.train.append(_train_estimate(run, shapes[name], counted, c, a, train_cfgs[run.arm]))
        if plan.train[-1].steps == 0:
            t = plan.train[-1]
            plan.notes.append(f"{t.run}: fewer {t.batch_unit} than one global batch of "
                              f"{train_cfgs[run.arm].global_batch_size}; the trainer refuses it")
    plan.evaluate = _eval_estimates(spec, graph, storage, a, plan.notes)
    plan.totals = _totals(plan)
    plan.schedule = _schedule(spec, graph, plan, node)
    return plan


def _schedule(spec: Any, graph: StudyGraph, plan: StudyEstimate, node: GpuNode) -> ScheduleEstimate | None:
    """The study's predicted schedule on the cluster, or None (with a note) when a run fits no node."""
    from valley.experiment.simulate import Unplaceable

    runs = {r.run_id: r for r in graph.runs}
    replicas = {f"generate:{e.run}": spec.arm_generate_config(runs[e.run].arm, runs[e.run].student).pool.replicas
                for e in plan.evaluate}
    work = stage_work(graph, plan.train, plan.evaluate, replicas)
    try:
        return predict_schedule(graph, work, node, spec.max_concurrent.model_dump())
    except Unplaceable as exc:
        plan.notes.append(f"no schedule predicted: {exc}")
        return None


def _readable_storage(root: str | None, notes: list[str]) -> Storage | None:
    """The storage root to read earlier runs from, or None (with a note) when there is none to read."""
    if not root:
        return None
    try:
        return Storage(root, create=False)
    except (OSError, ValueError) as exc:
        notes.append(f"storage {root} not readable ({exc}); no manifests or earlier samples used")
        return None


def _gib(mem: RankMemory) -> dict[str, float | None]:
    return {k: (round(v / GIB, 2) if isinstance(v, int) else v) for k, v in mem.as_dict().items()}


def estimate_spec_file(path: str, overrides: list[str] | None = None, *, node: GpuNode,
                   assumptions: Assumptions | None = None, storage_root: str | None = None) -> StudyEstimate:
    """Load an experiment spec as `valley run` does and plan it."""
    from valley.experiment import load_spec

    return estimate_study(load_spec(path, overrides or []), node, assumptions, storage_root)
