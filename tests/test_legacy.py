"""The readers of older layouts (valley.legacy): each is listed with what it reads and until when it stays,
and reads what the code before it wrote."""

from __future__ import annotations

import inspect

from valley import legacy
from valley.experiment.graph import GradeParams, Node, TrainParams
from valley.stage import StageResult


def test_every_shim_is_listed_with_what_it_reads_and_until_when():
    names = {n for n, v in vars(legacy).items() if not n.startswith("_") and (inspect.isfunction(v) or n.isupper())
             and n not in ("SHIMS", "map_paths") and getattr(v, "__module__", legacy.__name__) == legacy.__name__}
    assert names <= set(legacy.SHIMS), names - set(legacy.SHIMS)
    assert all(reads and until for reads, until in legacy.SHIMS.values())


def test_a_study_graph_written_before_typed_node_parameters_reads():
    """As `valley run` wrote graph.json before node parameters were typed (runs/demo of make demo)."""
    train = Node.from_dict({"deps": ["data:s"], "id": "train:s-r100", "kind": "train", "name": "exp-s-r100",
                            "params": {"data": "data:s", "per_epoch": False, "size": 100, "start": None,
                                       "subset": "r100"}, "resources": {"CPU": 1.0}, "student": "s"})
    assert train.params == TrainParams("r100", "r100", 100, "data:s", None, False)
    grade = Node.from_dict({"deps": ["generate:s-r100"], "id": "grade:s-r100", "kind": "grade", "name": "exp-s-r100",
                            "params": {"follows": ["generate:s-r100"], "generate": "generate:s-r100",
                                       "run_id": "s-r100"}, "resources": {}, "student": "s"})
    assert grade.params == GradeParams("s-r100", "generate:s-r100") and grade.follows == ("generate:s-r100",)
    assert Node.from_dict(grade.as_dict()) == grade


def test_an_old_marker_with_output_dir_and_absolute_paths_reads():
    class Result(StageResult):
        model_dir: str
        path_fields = ("model_dir",)

    found = Result.finished({"output_dir": "/old/root/train/x-0123456789ab",
                             "model_dir": "/old/root/train/x-0123456789ab/model"}, "train/x-0123456789ab")
    assert (found.stage_dir, found.model_dir, found.skipped) == ("train/x-0123456789ab",
                                                                 "train/x-0123456789ab/model", True)


def test_old_fault_field_names_still_load():
    from valley.train.config import TrainConfig

    assert TrainConfig(data="d", model="m", debug_kill_at_step=3).fault_kill_at_step == 3
