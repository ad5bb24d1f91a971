"""One Ray task per work item of a data-stage pass (an ingest chunk, a join's source chunk, partition or
part), its stats returned in item order.

Each item reads and writes its own files and returns a few counts, so no rows flow between tasks. Ray
Data's `from_items(...).map_batches(batch_size=1)`, which these passes used before, adds nothing to that
but its executor's start-up: on 2 cores, 2.1 s passed between submitting a 20K-trace ingest and its one
task starting (its stats and autoscaling actors, the executor), more than the task took. Plain tasks start
in workers that are already warm (tokenize.warm_workers) and keep Ray's scheduling by CPU and its retries
of tasks whose worker died; a task's error reaches the driver as the error it raised.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray

from valley.data.config import DataConfig
from valley.storage import Storage

ItemFn = Callable[..., dict[str, Any]]  # fn(item, cfg, storage, out_dir) -> the item's stats


@ray.remote(num_cpus=1)
def _run_item(fn: ItemFn, item: Any, cfg_json: str, storage_root: str, out_dir: str) -> dict[str, Any]:
    return fn(item, DataConfig.model_validate_json(cfg_json), Storage(storage_root), out_dir)


def map_items(fn: ItemFn, items: list[Any], cfg: DataConfig, storage: Storage, out_dir: str) -> list[dict[str, Any]]:
    """`fn` on every item, one Ray task each (one CPU; as many at once as the cluster has CPUs)."""
    cfg_json = cfg.model_dump_json()
    refs = [_run_item.remote(fn, item, cfg_json, storage.root, out_dir) for item in items]
    return ray.get(refs)
