"""Training telemetry: reported metrics land in TensorBoard event files (read back here), MLflow / W&B
when configured, and a real (tiny) training run writes them through Ray Train's reporting."""

from __future__ import annotations

import json

import pytest

from valley.train.telemetry import TelemetryCallback, callbacks, read_scalars, tracker_settings


def _metrics(step: int) -> dict:
    return {"step": step, "epoch": step / 4, "loss": 2.0 / step, "lr": 1e-4, "grad_norm": 0.5, "tokens": 4096,
            "tokens_per_s": 1000.0 + step, "step_time_s": 4.0, "mfu": 0.4, "time": 0.0}


def test_settings_come_from_the_trackers_own_environment():
    assert tracker_settings({}) == {"tensorboard": True, "mlflow": None, "wandb": None}
    s = tracker_settings({"MLFLOW_TRACKING_URI": "file:///tmp/m", "WANDB_PROJECT": "p", "WANDB_MODE": "offline",
                          "VALLEY_TENSORBOARD": "0"})
    assert s["tensorboard"] is False and s["mlflow"]["tracking_uri"] == "file:///tmp/m"
    assert s["wandb"] == {"project": "p", "mode": "offline", "dir": None}


def test_reported_steps_become_tensorboard_scalars(tmp_path):
    cb = TelemetryCallback(str(tmp_path), "train/x-1", "x", {}, {"tensorboard": True, "mlflow": None, "wandb": None})
    for step in (1, 2, 3):
        cb.after_report(None, [_metrics(step), _metrics(step)], checkpoint=None)
    cb.after_report(None, [_metrics(2)], checkpoint=None)  # a restart re-reports step 2: written once
    cb.close()
    scalars = read_scalars(tmp_path / "train" / "x-1" / "tensorboard")
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/mfu"} <= set(scalars)
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3]
    assert scalars["train/tokens_per_s"][-1] == (3, 1003.0)
    assert scalars["train/loss"][0][1] == pytest.approx(2.0)


def test_mlflow_offline(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    uri = (tmp_path / "mlruns").as_uri()
    settings = tracker_settings({"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": "valley-test",
                                 "VALLEY_TENSORBOARD": "0"})
    cb = TelemetryCallback(str(tmp_path), "train/x-1", "x", {"lr": 1e-4}, settings)
    for step in (1, 2):
        cb.log(_metrics(step))
    cb.close()
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["valley-test"])
    assert len(runs) == 1 and runs["metrics.loss"][0] == pytest.approx(1.0)


def test_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    settings = tracker_settings({"WANDB_PROJECT": "valley-test", "WANDB_MODE": "offline",
                                 "WANDB_DIR": str(tmp_path), "VALLEY_TENSORBOARD": "0"})
    cb = TelemetryCallback(str(tmp_path), "train/x-1", "x", {}, settings)
    cb.log(_metrics(1))
    cb.close()
    assert list(tmp_path.glob("wandb/offline-run-*"))


def test_all_trackers_off_means_no_callback(monkeypatch):
    from valley.train.config import TrainConfig

    monkeypatch.setenv("VALLEY_TENSORBOARD", "0")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    assert callbacks(TrainConfig(data="-", model="-"), "/tmp", "train/x") == []


@pytest.mark.slow
def test_demo_training_run_writes_tensorboard_events(ray_local, tmp_path):
    """A real 2-worker ZeRO-3 run: every logged step is in TensorBoard, equal to metrics.jsonl."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_train import build_model, synthetic_rows, write_data
    from valley.demo import build_demo_tokenizer
    from valley.storage import Storage
    from valley.train.config import TrainConfig
    from valley.train.stage import run_train

    tok = build_demo_tokenizer(tmp_path / "tok")
    model = build_model(tmp_path, "tiny", tok)  # bench_train's own model and rows: the run the benchmark times
    storage = Storage(str(tmp_path / "store"))
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(str(model)).vocab_size
    data = write_data(storage, synthetic_rows(16, 256, vocab, seed=0), tok, 256)
    cfg = TrainConfig(name="tb", data=data, model=str(model), num_workers=2, global_batch_size=4, epochs=1,
                      max_seq_len=256, cpus_per_worker=0.5, checkpoint_every_steps=1000, learning_rate=1e-3,
                      report_every_steps=1)
    result = run_train(cfg, storage)
    history = [json.loads(x) for x in storage.read_text(result.metrics_path).splitlines()]
    scalars = read_scalars(Path(storage.path(result.stage_dir, "tensorboard")))
    assert [s for s, _ in scalars["train/loss"]] == [h["step"] for h in history]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([h["loss"] for h in history], rel=1e-6)
    assert len(scalars["train/tokens_per_s"]) == len(history) == result.steps
