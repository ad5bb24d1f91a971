"""Storage paths, markers and the one stage protocol (valley.stage) every stage runs under."""

from __future__ import annotations

import os
from typing import ClassVar

import pyarrow as pa
import pytest

from valley.errors import ConfigError
from valley.stage import StageResult, located, run_stage
from valley.storage import SUCCESS, TMP_PREFIX, Storage, conform, stage_dir

H1 = "a" * 12 + "1" * 52
H2 = "a" * 12 + "2" * 52  # same stage directory as H1 (first 12 digits), another config


class ToyResult(StageResult):
    model_dir: str
    epochs: dict[int, str] = {}
    rows: int

    path_fields: ClassVar[tuple[str, ...]] = ("model_dir", "epochs")
    renamed_fields: ClassVar[dict[str, str]] = {"output_dir": "stage_dir"}


def _toy(storage: Storage, calls: list[str], rows: int = 3):
    def body(out: str) -> ToyResult:
        calls.append(out)
        assert not storage.exists(out, SUCCESS)  # the marker comes after the body
        storage.write_text("weights", out, "model", "w.txt")
        return ToyResult(stage_dir=out, model_dir=f"{out}/model", epochs={1: f"{out}/model"}, rows=rows)

    return body


# ---- listing and markers --------------------------------------------------------------------------------


def test_temporaries_and_markers_are_never_listed(storage):
    storage.write_text("x", "d", "a.txt")
    storage.write_text("y", "d", f"{TMP_PREFIX}123-b.txt")
    storage.write_parquet(pa.table({"x": [1]}), "d", "p.parquet")
    storage.write_parquet(pa.table({"x": [2]}), "d", f"{TMP_PREFIX}9-q.parquet")
    storage.mark_success("d", "h")
    assert storage.list("d") == ["a.txt", "p.parquet"]
    assert storage.read_parquet("d").column("x").to_pylist() == [1]
    assert storage.clean_temporaries("d") == 2
    assert storage.clean_temporaries("d") == 0
    assert storage.list("missing") == []


def test_marker_with_another_hash_is_not_complete(storage):
    assert not storage.is_complete("s", H1)
    storage.mark_success("s", H1, {"n": 1})
    assert storage.is_complete("s", H1)
    assert not storage.is_complete("s", H2)
    assert storage.success_summary("s") == {"n": 1}
    storage.write_text("{not json", "s", SUCCESS)
    assert not storage.is_complete("s", H1)


# ---- paths ----------------------------------------------------------------------------------------------


def test_relative_and_absolute_round_trip(storage, tmp_path):
    assert storage.path() == storage.base and storage.path("", "a") == storage.path("a")
    for rel in ("a", "a/b/c.parquet"):
        assert storage.relative(storage.path(rel)) == rel
        assert storage.relative(storage.uri(rel)) == rel
        assert storage.relative(f"file://{storage.path(rel)}") == rel
        assert storage.relative(rel) == rel  # already relative: unchanged
        assert storage.resolve(rel) == (storage, rel)
        assert storage.resolve(storage.path(rel)) == (storage, rel)
        assert storage.resolve(f"file://{storage.path(rel)}") == (storage, rel)
    assert storage.relative(storage.uri()) == ""
    with pytest.raises(ValueError, match="not under the storage root"):
        storage.relative(str(tmp_path / "elsewhere"))
    with pytest.raises(ValueError):
        storage.relative("s3://bucket/a")


def test_resolve_outside_the_root(storage, tmp_path, monkeypatch):
    outside = tmp_path / "corpus"
    outside.mkdir()
    (outside / "t.parquet").write_bytes(b"x")
    for path in (str(outside / "t.parquet"), f"file://{outside / 't.parquet'}"):
        st, rel = storage.resolve(path)
        assert st is not storage and st.local and rel == ""
        assert st.path(rel) == str(outside / "t.parquet") and st.uri(rel) == str(outside / "t.parquet")
        assert st.exists(rel)
    # a missing input is named, and resolving it makes nothing on disk
    missing = tmp_path / "nowhere" / "x"
    st, rel = storage.resolve(str(missing))
    assert not st.exists(rel) and not missing.parent.exists()
    with pytest.raises(ConfigError, match="does not exist"):
        storage.resolve(str(missing), must_exist=True)
    with pytest.raises(ConfigError, match="does not exist"):
        storage.resolve("not/here", must_exist=True)
    # a relative path only the working directory has is read from there; the root wins when both have it
    monkeypatch.chdir(tmp_path)
    st, rel = storage.resolve("corpus/t.parquet")
    assert st.path(rel) == str(outside / "t.parquet")
    storage.write_bytes(b"y", "corpus", "t.parquet")
    assert storage.resolve("corpus/t.parquet") == (storage, "corpus/t.parquet")


# ---- conform --------------------------------------------------------------------------------------------


def test_conform_missing_columns():
    schema = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("score", pa.float64())])
    with pytest.raises(ValueError, match="'id'"):
        conform(pa.table({"score": [1.0]}), schema)
    out = conform(pa.table({"id": ["a", "b"], "extra": [1, 2]}), schema)
    assert out.column_names == ["id", "score", "extra"]
    assert out.column("score").to_pylist() == [None, None] and out.schema.field("score").type == pa.float64()


# ---- the stage protocol ---------------------------------------------------------------------------------


def test_stage_runs_once_then_skips(storage):
    calls: list[str] = []
    first = run_stage(storage, "toy", "n", H1, ToyResult, _toy(storage, calls))
    out = stage_dir("toy", "n", H1)
    assert calls == [out] and not first.skipped
    assert first.stage_dir == out and first.model_dir == f"{out}/model"  # root-relative
    assert storage.is_complete(out, H1)
    assert "skipped" not in storage.success_summary(out)

    again = run_stage(storage, "toy", "n", H1, ToyResult, _toy(storage, calls))
    assert calls == [out] and again.skipped
    assert again.model_dump(exclude={"skipped"}) == first.model_dump(exclude={"skipped"})


def test_stage_reruns_on_another_hash_after_cleaning(storage):
    calls: list[str] = []
    run_stage(storage, "toy", "n", H1, ToyResult, _toy(storage, calls))
    out = stage_dir("toy", "n", H2)
    assert out == stage_dir("toy", "n", H1)
    storage.write_text("half", out, "model", f"{TMP_PREFIX}1-w.txt")  # what a killed writer leaves

    def body(o: str) -> ToyResult:
        assert not [n for n in os.listdir(storage.path(o, "model")) if n.startswith(TMP_PREFIX)]
        return _toy(storage, calls, rows=7)(o)

    second = run_stage(storage, "toy", "n", H2, ToyResult, body)
    assert not second.skipped and second.rows == 7 and len(calls) == 2
    assert storage.is_complete(out, H2) and not storage.is_complete(out, H1)


def test_body_that_raises_leaves_no_marker(storage):
    def body(out: str) -> ToyResult:
        storage.write_text("partial", out, "model", "w.txt")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        run_stage(storage, "toy", "n", H1, ToyResult, body)
    out = stage_dir("toy", "n", H1)
    assert storage.exists(out, "model", "w.txt") and not storage.exists(out, SUCCESS)
    # nor does a marker of another config sharing the directory survive a failed run over it
    storage.mark_success(out, H2, {})
    with pytest.raises(RuntimeError):
        run_stage(storage, "toy", "n", H1, ToyResult, body)
    assert not storage.exists(out, SUCCESS)


def test_old_marker_shapes_load_with_relative_paths(storage):
    out = stage_dir("toy", "n", H1)
    old_root = "/some/older/root"  # written under another root path: the stage directory still anchors it
    storage.mark_success(out, H1, {"output_dir": storage.uri(out), "model_dir": f"{old_root}/{out}/model",
                                   "epochs": {"1": storage.uri(out, "model")}, "rows": 4})
    res = run_stage(storage, "toy", "n", H1, ToyResult, lambda o: pytest.fail("must not re-run"))
    assert res.skipped and res.stage_dir == out and res.model_dir == f"{out}/model" and res.epochs == {1: f"{out}/model"}
    assert res.rows == 4


def test_old_data_generate_train_markers(storage):
    from valley.data.stage import DataResult
    from valley.generate.stage import GenerateResult
    from valley.train.stage import TrainResult

    data_out = stage_dir("data", "d", H1)
    storage.mark_success(data_out, H1, {"output_dir": storage.uri(data_out), "config_hash": H1, "accepted": 3,
                                        "rejected": 0, "rejected_by_reason": {}, "questions_deduplicated": 0,
                                        "subsets": {"all": {"rows": 3, "path": f"{data_out}/tokenized/all"}}})
    data = run_stage(storage, "data", "d", H1, DataResult, lambda o: pytest.fail("re-ran"))
    assert data.skipped and data.stage_dir == data_out and data.subsets["all"]["path"] == f"{data_out}/tokenized/all"

    gen_out = stage_dir("generate", "g", H1)
    storage.mark_success(gen_out, H1, {
        "stage_dir": gen_out, "samples_uri": storage.uri(gen_out, "samples"),
        "problems_uri": storage.uri(gen_out, "problems.parquet"), "run_id": "m", "n_problems": 1, "n_samples": 2,
        "n_generated": 2, "n_resumed": 0, "generated_tokens": 10, "tokens_per_s": 1.0, "finish_reasons": {},
        "selection": {}, "skipped": False, "seconds": 5.0})
    gen = run_stage(storage, "generate", "g", H1, GenerateResult, lambda o: pytest.fail("re-ran"))
    assert (gen.samples, gen.problems) == (f"{gen_out}/samples", f"{gen_out}/problems.parquet")
    assert gen.skipped and gen.n_generated == 0 and gen.seconds == 0.0

    tr_out = stage_dir("train", "t", H1)
    storage.mark_success(tr_out, H1, {
        "output_dir": storage.uri(tr_out), "model_dir": storage.uri(tr_out, "model"),
        "epoch_model_dirs": {"1": storage.uri(tr_out, "model-epoch1"), "2": storage.uri(tr_out, "model")},
        "checkpoints_dir": storage.uri(tr_out, "checkpoints"), "metrics_path": storage.uri(tr_out, "metrics.jsonl"),
        "config_hash": H1, "steps": 2, "steps_per_epoch": 1, "rows": 4, "rows_left_over_per_epoch": 0,
        "tokens_per_epoch": 100, "final_loss": 1.5})
    tr = run_stage(storage, "train", "t", H1, TrainResult, lambda o: pytest.fail("re-ran"))
    assert tr.stage_dir == tr_out and tr.model_dir == f"{tr_out}/model"
    assert tr.epoch_model_dirs == {1: f"{tr_out}/model-epoch1", 2: f"{tr_out}/model"}
    assert tr.metrics_path == f"{tr_out}/metrics.jsonl" and tr.checkpoints_dir == f"{tr_out}/checkpoints"
    # people see full locations
    shown = located(tr, storage)
    assert shown["stage_dir"] == storage.uri(tr_out) and shown["model_dir"] == storage.uri(tr_out, "model")
    assert shown["epoch_model_dirs"]["1"] == storage.uri(tr_out, "model-epoch1")
