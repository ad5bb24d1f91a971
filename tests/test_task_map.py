"""The data stage's task-per-item map: results in item order, and an item's error reaches the driver as
the error it raised (the CLI reports ValleyErrors by type). The item functions are made inside the tests,
so Ray ships them by value (workers cannot import a test module)."""

from __future__ import annotations

import pytest

from valley.data.config import DataConfig
from valley.data.task_map import map_items
from valley.errors import InputError
from valley.storage import Storage


def _cfg(tmp_path) -> DataConfig:
    return DataConfig(name="map", inputs=[str(tmp_path / "x.jsonl")], tokenizer=str(tmp_path))


def test_items_come_back_in_order_with_the_stage_arguments(ray_local, tmp_path):
    def echo(item: int, cfg: DataConfig, storage: Storage, out_dir: str) -> dict:
        return {"item": item, "name": cfg.name, "root": storage.root, "out": out_dir}

    storage = Storage(str(tmp_path / "store"))
    out = map_items(echo, [3, 1, 2, 0], _cfg(tmp_path), storage, "data/map-1")
    assert [o["item"] for o in out] == [3, 1, 2, 0]
    assert {(o["name"], o["root"], o["out"]) for o in out} == {("map", storage.root, "data/map-1")}


def test_an_items_error_reaches_the_driver_as_raised(ray_local, tmp_path):
    def refuse(item: int, cfg: DataConfig, storage: Storage, out_dir: str) -> dict:
        if item == 2:
            raise InputError("bad chunk", file="corpus.jsonl", row=7, field="response")
        return {"item": item}

    with pytest.raises(InputError, match=r"bad chunk \(file corpus.jsonl, row 7, field 'response'\)"):
        map_items(refuse, [0, 1, 2, 3], _cfg(tmp_path), Storage(str(tmp_path / "store")), "out")


def test_no_items_no_tasks(tmp_path):
    assert map_items(print, [], _cfg(tmp_path), Storage(str(tmp_path / "store")), "out") == []
