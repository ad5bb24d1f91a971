"""A study as one spec: validated (`spec`; its design of arms and comparisons in `arms`), planned as a graph
of stage runs (`graph`), run across the cluster (`executor`, `nodes`, `runner`), and followed from anywhere
that sees the storage (`status`)."""

from valley.experiment.graph import EvalRun, Node, StudyGraph, epoch_runs, plan_study
from valley.experiment.runner import ExperimentResult, StudyFailed, run_experiment, run_experiment_file
from valley.experiment.spec import ExperimentSpec, StudentSpec, StudySpec, load_spec, resolve_local_paths

__all__ = ["EvalRun", "ExperimentResult", "ExperimentSpec", "Node", "StudentSpec", "StudyFailed", "StudyGraph",
           "StudySpec", "epoch_runs", "load_spec", "plan_study", "resolve_local_paths", "run_experiment",
           "run_experiment_file"]
