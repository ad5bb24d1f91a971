"""Training telemetry a user watches during a long run: the metrics workers pass to `ray.train.report` —
loss, lr, grad norm, tokens/s, step time, MFU on GPU — written to TensorBoard, and to MLflow and/or
Weights & Biases when configured.

A Ray Train `UserCallback` does the writing on Ray Train's controller, so the training loop stays as it
is (rank 0's metrics are already global: the loop all-reduces them) and no worker holds a tracking
client. Configuration is the trackers' own environment, read on the driver when the run starts:
`MLFLOW_TRACKING_URI` turns MLflow on (a `file:` URI needs no server or network; `MLFLOW_EXPERIMENT_NAME`
names the experiment), `WANDB_PROJECT` turns W&B on (`WANDB_MODE=offline` writes a local run to sync
later), `VALLEY_TENSORBOARD=0` turns TensorBoard off. TensorBoard event files go to `<run>/tensorboard/`
directly when the storage root is local, else to a local directory whose files are copied to storage at
every checkpoint and at the end.
"""

from __future__ import annotations

import os
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

from ray.train import UserCallback

SCALARS = ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "step_time_s", "epoch", "loss_tokens")


def tracker_settings(env: dict[str, str] | None = None) -> dict[str, Any]:
    """Which trackers are on, from the environment of the process that starts the run."""
    env = dict(os.environ if env is None else env)
    return {
        "tensorboard": env.get("VALLEY_TENSORBOARD", "1") not in ("0", "false", "no"),
        "mlflow": {"tracking_uri": env["MLFLOW_TRACKING_URI"],
                   "experiment": env.get("MLFLOW_EXPERIMENT_NAME", "valley")} if env.get("MLFLOW_TRACKING_URI") else None,
        "wandb": {"project": env["WANDB_PROJECT"], "mode": env.get("WANDB_MODE", "online"),
                  "dir": env.get("WANDB_DIR")} if env.get("WANDB_PROJECT") else None,
    }


class TelemetryCallback(UserCallback):
    """Writes rank 0's reported metrics, once per reported step, to the configured trackers."""

    def __init__(self, storage_root: str, out_dir: str, run_name: str, config: dict[str, Any],
                 settings: dict[str, Any] | None = None):
        self.storage_root, self.out_dir, self.run_name = storage_root, out_dir, run_name
        self.config = config
        self.settings = settings if settings is not None else tracker_settings()
        self._tb: Any = None
        self._tb_dir: Path | None = None
        self._mlflow: Any = None
        self._wandb: Any = None
        self._last_step = -1

    # ---- lazily opened writers (this object is pickled to the controller first)

    def _storage(self) -> Any:
        from valley.storage import Storage

        return Storage(self.storage_root)

    def tensorboard_dir(self) -> Path:
        st = self._storage()
        if "://" not in st.uri() or st.uri().startswith("file://"):
            return Path(st.path(self.out_dir, "tensorboard"))
        return Path(tempfile.mkdtemp(prefix="valley-tb-"))  # copied to storage at checkpoints

    def _open(self) -> None:
        if self.settings.get("tensorboard") and self._tb is None:
            # tensorboardX's own event writer, without SummaryWriter's queue: its flush() left events in the
            # queue for a thread to write later, after the run's marker had recorded the file's size
            from tensorboardX.event_file_writer import EventsWriter

            self._tb_dir = self.tensorboard_dir()
            self._tb_dir.mkdir(parents=True, exist_ok=True)
            self._tb = EventsWriter(str(self._tb_dir / "events"))
        mlflow_cfg = self.settings.get("mlflow")
        if mlflow_cfg and self._mlflow is None:
            import mlflow

            mlflow.set_tracking_uri(mlflow_cfg["tracking_uri"])
            mlflow.set_experiment(mlflow_cfg["experiment"])
            self._mlflow = mlflow.start_run(run_name=self.run_name)
            mlflow.log_params({k: v for k, v in self.config.items() if isinstance(v, (int, float, str, bool))})
        wandb_cfg = self.settings.get("wandb")
        if wandb_cfg and self._wandb is None:
            import wandb

            self._wandb = wandb.init(project=wandb_cfg["project"], name=self.run_name, mode=wandb_cfg["mode"],
                                     dir=wandb_cfg.get("dir"), config=self.config, reinit=True)

    def log(self, metrics: dict[str, Any]) -> None:
        """One step's metrics (as the loop reports them) to every open tracker."""
        step = int(metrics.get("step", self._last_step + 1))
        if step <= self._last_step:  # a restarted run reports steps again from its checkpoint
            return
        self._last_step = step
        self._open()
        values = {k: float(metrics[k]) for k in SCALARS if isinstance(metrics.get(k), (int, float))}
        if self._tb is not None:
            from tensorboardX.proto.event_pb2 import Event
            from tensorboardX.summary import scalar

            now = time.time()
            for key, value in values.items():
                self._tb.write_event(Event(wall_time=now, step=step, summary=scalar(f"train/{key}", value)))
        if self._mlflow is not None:
            import mlflow

            mlflow.log_metrics(values, step=step)
        if self._wandb is not None:
            self._wandb.log({f"train/{k}": v for k, v in values.items()}, step=step)
        if self._tb is not None:
            self._tb.flush()  # on disk before the next report: the controller may be torn down without notice

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if metrics and metrics[0]:
            self.log(metrics[0])
        if checkpoint is not None:
            self.flush()

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._sync()

    def _sync(self) -> None:
        """Copy event files to remote storage (a no-op when they are written there directly)."""
        if self._tb_dir is None or self._tb_dir == self.tensorboard_dir():
            return
        st = self._storage()
        for f in self._tb_dir.iterdir():
            st.write_bytes(f.read_bytes(), self.out_dir, "tensorboard", f.name)

    def close(self) -> None:
        self.flush()
        if self._tb is not None:
            self._tb.close()
        if self._mlflow is not None:
            import mlflow

            mlflow.end_run()
        if self._wandb is not None:
            self._wandb.finish()

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        self.flush()


def callbacks(cfg: Any, storage_root: str, out_dir: str) -> list[TelemetryCallback]:
    """The run's telemetry callbacks (none when every tracker is off)."""
    settings = tracker_settings()
    if not (settings["tensorboard"] or settings["mlflow"] or settings["wandb"]):
        return []
    config = {k: v for k, v in cfg.model_dump(mode="json").items() if not isinstance(v, (dict, list))}
    return [TelemetryCallback(storage_root, out_dir, cfg.name or out_dir.rsplit("/", 1)[-1], config, settings)]


def read_scalars(logdir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars of every TensorBoard event file under `logdir`: {tag: [(step, value), …]} in file order.

    Reads the TFRecord framing (length, CRC, event, CRC) with tensorboardX's own `Event` protobuf, so a
    check needs neither TensorBoard nor TensorFlow."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(logdir).glob("**/events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((int(event.step), float(v.simple_value)))
    return out
