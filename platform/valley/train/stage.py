"""`run_train`: SFT of a student on the data stage's packed rows with Ray Train's TorchTrainer + DeepSpeed.

Outputs under `train/<name>-<hash>/`: `checkpoints/` (Ray Train's run storage: ZeRO checkpoints and its
snapshot, so a re-submitted job with the same config continues from the last checkpoint), `model/` (the
exported Hugging Face directory; with `export_every_epoch` also `model-epoch<k>/` after each earlier
epoch), `metrics.jsonl` (one line per step), and `_SUCCESS` last; `stall.json` when the watchdog failed it.

Ray Train's `fit()` runs inside a small actor owned by this driver while the driver watches the workers'
heartbeats (valley.watchdog): a run that stops making progress — workers that never start, a lost peer, a
lock nobody will release — is torn down by killing that actor (Ray then ends the controller and workers it
owns) and fails with `StallError` naming the phase and worker, instead of hanging without a word.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from valley.errors import ConfigError
from valley.stage import StageResult, run_stage
from valley.storage import Storage
from valley.train.config import TrainConfig
from valley.train.export import EXPORT_MARKER, is_exported
from valley.train.loop import epoch_dataset_name, epoch_model_name, train_loop_per_worker
from valley.train.plan import TrainPlan, plan_run
from valley.watchdog import StallError, default_timeout, kill_registered, start_board, watch_ref

RUN_NAME = "checkpoints"
STALL_RECORD = "stall.json"


class TrainResult(StageResult):
    """Paths under the storage root; `storage.uri(model_dir)` is what a generate or stage-2 config takes."""

    model_dir: str
    # epoch number (1-based) -> exported model after it; the last epoch is `model_dir`, earlier ones are
    # present only with `export_every_epoch`
    epoch_model_dirs: dict[int, str] = {}
    checkpoints_dir: str
    metrics_path: str
    config_hash: str
    steps: int
    steps_per_epoch: int
    rows: int
    rows_left_over_per_epoch: int  # rows of an epoch no step trains (reshuffled next epoch)
    tokens_per_epoch: int
    final_loss: float | None = None
    # what global_batch_size counted and what became of an epoch's incomplete last group (markers written
    # before these fields existed were rows runs that dropped it)
    batch_unit: str = "rows"
    last_step: str = "drop"
    examples: int | None = None  # documents (traces) per epoch
    examples_per_step: float | None = None  # mean over an epoch's steps
    tokens_per_step: float | None = None  # mean over an epoch's steps
    last_step_size: int = 0  # rows or examples (the unit) in each epoch's smaller last step; 0: none
    examples_left_over_per_epoch: int = 0  # examples unit with last_step: drop

    path_fields: ClassVar[tuple[str, ...]] = ("model_dir", "epoch_model_dirs", "checkpoints_dir", "metrics_path")
    size_only: ClassVar[tuple[str, ...]] = (RUN_NAME,)  # ZeRO checkpoints: resumable state, not read after the run

    @property
    def trained_tokens(self) -> int:
        """Tokens the run's optimizer steps went through (padding aside): the report's compute axis."""
        if self.tokens_per_step is not None:
            return int(round(self.tokens_per_step * self.steps))
        return int(round(self.tokens_per_epoch * self.steps / max(self.steps_per_epoch, 1)))

    def cost_facts(self) -> dict[str, Any]:
        """What the cost table keeps beside a training run's time: the recipe as run (for the report)."""
        return {"trained_tokens": self.trained_tokens, "steps": self.steps, "batch_unit": self.batch_unit,
                "examples_per_step": self.examples_per_step, "tokens_per_step": self.tokens_per_step}

def epoch_datasets(cfg: TrainConfig, files: tuple[str, ...]) -> dict[str, Any]:
    """One lazily read dataset per epoch, each shuffled with its own seed: deterministic, so a restarted run
    sees the same order and can skip what it already trained on."""
    import ray.data

    from valley.train.batches import TRAIN_COLUMNS

    base = ray.data.read_parquet(list(files), shuffle=None).select_columns(TRAIN_COLUMNS)
    out = {}
    for epoch in range(cfg.epochs):
        out[epoch_dataset_name(epoch)] = base.random_shuffle(seed=cfg.seed + epoch) if cfg.shuffle else base
    return out


def build_trainer(cfg: TrainConfig, storage: Storage, out: str, plan: TrainPlan, board: Any = None) -> Any:
    """Ray Train's TorchTrainer for the run; rows come through Ray Data, while an examples run's workers
    read their own documents (train/example_feed.py), so it has no datasets."""
    from ray.data import ExecutionOptions
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from valley.train import telemetry

    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "plan": plan, "board": board},
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=cfg.worker_resources()),
        run_config=RunConfig(
            name=RUN_NAME,
            storage_path=storage.uri(out),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoints_to_keep),
            # TensorBoard / MLflow / W&B, and the controller's start-up steps for the watchdog
            callbacks=[*telemetry.callbacks(cfg, storage.uri(), out),
                       *(_controller_beats(board) if board is not None else [])],
            worker_runtime_env={"env_vars": {"DS_ACCELERATOR": "cuda" if cfg.use_gpu else "cpu",
                                             "TOKENIZERS_PARALLELISM": "false"}},
        ),
        **({"datasets": epoch_datasets(cfg, plan.files),
            "dataset_config": DataConfig(execution_options=ExecutionOptions(preserve_order=True))}
           if plan.unit == "rows" else {}),
    )


def _check_cpus_left_for_data(cfg: TrainConfig) -> None:
    """Ray Data's read/shuffle tasks need a whole CPU beside the workers, or the run waits forever."""
    import ray

    total = ray.cluster_resources().get("CPU", 0.0)
    left = total - cfg.run_resources().get("CPU", 0.0)
    if left < 1:
        raise ConfigError(f"{cfg.num_workers} workers × cpus_per_worker={cfg.cpus_per_worker} leave {left:g} of "
                          f"{total:g} cluster CPUs for reading data; at least 1 must stay free "
                          "(lower cpus_per_worker or add CPUs)")


def _controller_beats(board: Any) -> list[Any]:
    """A Ray Train worker-group callback that reports the controller's start-up steps to the board, so a
    run stuck before any worker runs (placement, actor start, process group) says where. Ray marks these
    hooks as internal but takes such callbacks in `RunConfig(callbacks=…)`; without them (another Ray),
    the watchdog still works, only less precisely named."""
    try:
        from ray.train.v2._internal.execution.callback import WorkerGroupCallback
    except ImportError:
        return []
    from valley.watchdog import Heartbeat

    class ControllerBeats(WorkerGroupCallback):
        def __init__(self) -> None:
            self.hb = Heartbeat(board, "controller")
            self.placing = False  # a start of the worker group is under way and has not succeeded yet

        def before_worker_group_start(self, worker_group_context: Any) -> None:
            # Only the first attempt of a (re)start is progress. Ray Train retries a start whose resources
            # did not come within its timeout for ever; had every retry beaten, resources that never come
            # (a lost node and no replacement) would never have been reported as a stall.
            if not self.placing:
                self.hb.beat("worker_group", "placing and starting the train workers")
            self.placing = True

        def after_worker_group_start(self, worker_group: Any) -> None:
            self.placing = False
            self.hb.beat("worker_group", "workers started; setting up their process group")
            return super().after_worker_group_start(worker_group)

        def after_worker_group_training_start(self, worker_group: Any) -> None:
            self.hb.beat("worker_group", "training function launched on every worker")

    return [ControllerBeats()]


class FitRunner:
    """Ray actor (no CPU) that runs `TorchTrainer.fit()`: Ray Train's controller and workers are owned by
    it, so killing it is how a stalled run is ended (the driver itself must live on to report)."""

    def fit(self, cfg_json: dict[str, Any], storage_root: str, out: str, plan: TrainPlan, board: Any) -> None:
        cfg = TrainConfig.model_validate(cfg_json)
        result = build_trainer(cfg, Storage(storage_root), out, plan, board).fit()
        if getattr(result, "error", None) is not None:
            raise result.error


def _fit_watched(cfg: TrainConfig, storage: Storage, out: str, plan: TrainPlan) -> None:
    """`fit()` under the watchdog: returns when training finished, raises its error or `StallError`."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    board = start_board()
    here = ray.get_runtime_context().get_node_id()
    # On the driver's own node, hard: a soft affinity let Ray place it (and so Ray Train's controller, which
    # follows it) on a worker node whenever this one was busy starting workers, and the loss of that node
    # then failed the run instead of Ray Train restarting its workers elsewhere. A runner killed by the OOM
    # killer is restarted here and fit() called again, which continues from the run's last checkpoint.
    runner = ray.remote(num_cpus=0, max_restarts=2, max_task_retries=2)(FitRunner).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()
    waiting = (f"waiting for {cfg.num_workers} train workers × {cfg.worker_resources()} to start and join their "
               f"process group (cluster resources now: {ray.available_resources()})")

    def on_stall(err: StallError) -> None:
        ray.kill(runner)  # its controller and workers go with it
        kill_registered(board)  # the placement group does not: it belongs to the job
        storage.write_json(err.record(), out, STALL_RECORD)

    try:
        watch_ref(runner.fit.remote(cfg.model_dump(mode="json"), storage.root, out, plan, board), board,
                  stage=f"train {cfg.name}", timeout_s=default_timeout(cfg.use_gpu, cfg.stall_timeout_s),
                  idle_phase="worker_group", idle_detail=waiting, on_stall=on_stall)
    finally:
        ray.kill(runner)
        ray.kill(board)


def run_train(cfg: TrainConfig, storage: Storage) -> TrainResult:
    """Train (or continue a killed run of) this config; a finished run with the same config is skipped."""
    h = cfg.config_hash()
    return run_stage(storage, "train", cfg.name, h, TrainResult, lambda out: _train(cfg, storage, h, out))


def _train(cfg: TrainConfig, storage: Storage, h: str, out: str) -> TrainResult:
    """The stage body (valley.stage.run_stage does the skip, clean-up and marker around it)."""
    plan = plan_run(cfg, storage, out)
    print(f"[valley.train] {describe_steps(plan)}", flush=True)
    if plan.unit == "rows":
        _check_cpus_left_for_data(cfg)
    _fit_watched(cfg, storage, out, plan)
    epoch_dirs = {cfg.epochs: "model"}
    if cfg.export_every_epoch:
        epoch_dirs.update({k: epoch_model_name(k) for k in range(1, cfg.epochs)})
    for name in epoch_dirs.values():
        if not is_exported(storage, out, name):
            raise ConfigError(f"training finished but the export {storage.uri(out, name)} is incomplete "
                              f"(no {EXPORT_MARKER})")
    history = [json.loads(line) for line in storage.read_text(out, "metrics.jsonl").splitlines() if line]
    return TrainResult(
        stage_dir=out,
        model_dir=f"{out}/model",
        epoch_model_dirs={k: f"{out}/{name}" for k, name in sorted(epoch_dirs.items())},
        checkpoints_dir=f"{out}/{RUN_NAME}",
        metrics_path=f"{out}/metrics.jsonl",
        config_hash=h,
        steps=plan.total_steps,
        steps_per_epoch=plan.steps_per_epoch,
        rows=plan.rows,
        rows_left_over_per_epoch=plan.rows_left_over_per_epoch,
        tokens_per_epoch=plan.tokens,
        final_loss=history[-1]["loss"] if history else None,
        **step_report(plan),
    )


def describe_steps(plan: TrainPlan) -> str:
    """One line on what a step is and what becomes of an epoch's incomplete last group."""
    c = plan.counts
    last = (f"a last step of {c.last_step_units} {c.unit}" if c.last_step_units else
            f"{c.left_over} {c.unit} left over per epoch" if c.left_over else "no incomplete last step")
    return (f"{c.units} {c.unit} per epoch in {c.steps_per_epoch} steps of {c.per_step} ({last}), "
            f"{plan.total_steps} steps in all; per step {plan.examples_per_step():,.1f} examples and "
            f"{plan.tokens_per_step():,.0f} tokens on average")


def step_report(plan: TrainPlan) -> dict[str, Any]:
    """The run's batch unit and step sizes as the result reports them."""
    counts = plan.counts
    return {"batch_unit": counts.unit, "last_step": counts.last_step, "examples": plan.examples,
            "examples_per_step": round(plan.examples_per_step(), 3),
            "tokens_per_step": round(plan.tokens_per_step(), 1), "last_step_size": counts.last_step_units,
            "examples_left_over_per_epoch": counts.left_over if counts.unit == "examples" else 0}
