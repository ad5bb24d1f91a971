"""The protocol every stage follows, in one place: skip a finished run, clean what a killed run left, run
the stage body, then write the `_SUCCESS` marker (holding the result's summary) last.

A stage result (`StageResult`) names its files by paths relative to the storage root, its own directory in
`stage_dir`, so it means the same on every node and after the root moves; `located` turns those paths into
full locations for people. Markers written before this contract (URIs, `output_dir`) are converted when
read, so a finished stage is still skipped, never redone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel

from valley import legacy
from valley.errors import StorageError, storage_errno
from valley.lease import StageLease
from valley.storage import SUCCESS, Storage, stage_dir

__all__ = ["StageResult", "located", "run_stage"]

R = TypeVar("R", bound="StageResult")


class StageResult(BaseModel):
    """What a stage returns and records in its marker. Every path field is under the storage root."""

    stage_dir: str
    skipped: bool = False  # the stage was already complete: nothing ran

    # fields holding root-relative paths besides stage_dir (a str, a list or dict of str, or None)
    path_fields: ClassVar[tuple[str, ...]] = ()
    # what a skipped run reports differently from the run that did the work
    on_skip: ClassVar[dict[str, Any]] = {}
    # directories (relative to stage_dir) whose files the marker lists with their size but no hash: large
    # resumable state that no later stage reads (valley/integrity.py)
    size_only: ClassVar[tuple[str, ...]] = ()

    def summary(self) -> dict[str, Any]:
        """What the marker records: every field but `skipped`, JSON-ready."""
        return self.model_dump(mode="json", exclude={"skipped"})

    @classmethod
    def finished(cls: type[R], summary: dict[str, Any], out: str) -> R:
        """The result of a complete run from its marker's summary, old shapes included (see module doc)."""
        data = legacy.renamed_result_fields(summary)
        data["stage_dir"] = out  # where the marker was found: right even if the root has moved since
        for name in cls.path_fields:
            if name in data:
                data[name] = legacy.paths_under_stage(data[name], out)
        return cls.model_validate({**data, **cls.on_skip, "skipped": True})

    def located(self, storage: Storage) -> dict[str, Any]:
        """The result for people: its paths as full locations (storage.uri) under `storage`."""
        data = self.model_dump(mode="json")
        for name in ("stage_dir", *self.path_fields):
            data[name] = legacy.map_paths(data.get(name), storage.uri)
        return data


def run_stage(storage: Storage, stage: str, name: str, config_hash: str, result_type: type[R],
              body: Callable[[str], R]) -> R:
    """Run `body(stage_dir)` once per config: a finished run with this hash is returned (skipped=True);
    otherwise, holding the stage run's lease (a second writer waits or stops, naming the first), the
    temporaries a killed run left under the stage directory (and a marker with another hash) are removed,
    the body runs, and the marker is written last, so a body that raises leaves no marker."""
    out = stage_dir(stage, name, config_hash)
    if storage.is_complete(out, config_hash):
        return finished_run(storage, out, result_type)
    storage.check_writable()  # a read-only or full root is refused here, before the lease and the body
    with StageLease(storage, out).acquire():  # one writer: a second one waits or stops (valley/lease.py)
        if storage.is_complete(out, config_hash):  # finished by the writer we waited for
            return finished_run(storage, out, result_type)
        storage.clean_temporaries(out)
        storage.remove(out, SUCCESS)  # another config's marker (same 12-digit prefix) must not outlive a partial run
        try:
            result = body(out)
        except StorageError:
            raise
        except Exception as exc:  # a worker's full disk arrives wrapped by Ray: name the run it was writing
            if storage_errno(exc) is None:
                raise
            raise StorageError.of(f"write {stage} run", storage.uri(out), exc) from exc
        storage.mark_success(out, config_hash, result.summary(), size_only=result_type.size_only)
        return result


def finished_run(storage: Storage, out: str, result_type: type[R]) -> R:
    """A finished run's result from its marker, once its files are all there at their recorded sizes: a
    truncated or missing output is refused with the files named, never handed to the next stage."""
    marker = storage.read_json(out, SUCCESS)
    storage.require_intact(out, marker)
    return result_type.finished(marker.get("summary", {}), out)


def located(result: Any, storage: Storage) -> Any:
    """Any stage's return value for printing: stage results with full locations, dataclasses (a group of
    results) field by field, other models as JSON-ready dicts."""
    if isinstance(result, StageResult):
        return result.located(storage)
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return {f.name: located(getattr(result, f.name), storage) for f in dataclasses.fields(result)}
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    return result
