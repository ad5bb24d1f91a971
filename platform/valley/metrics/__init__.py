"""Evaluation metrics over samples + verdicts + problems: pass@k, completion and think-tag rates,
verdict mix, breakdowns with bootstrap CIs over problems, paired tests between arms (paired.py), what a
design can detect (power.py), and the valley fit. Pure functions."""

from valley.metrics.bootstrap import bootstrap_ratio, bootstrap_ratios
from valley.metrics.compute import compute_run_metrics, metrics_from_joined, per_problem
from valley.metrics.join import JoinedRun, join_run
from valley.metrics.paired import (
    ArmSummary,
    PairedDifference,
    arm_summary,
    describe,
    holm,
    paired_difference,
    paired_differences,
)
from valley.metrics.passk import pass_at_1, pass_at_k
from valley.metrics.valley_fit import fit_valley

__all__ = [
    "ArmSummary",
    "JoinedRun",
    "PairedDifference",
    "arm_summary",
    "bootstrap_ratio",
    "bootstrap_ratios",
    "compute_run_metrics",
    "describe",
    "fit_valley",
    "holm",
    "join_run",
    "metrics_from_joined",
    "paired_difference",
    "paired_differences",
    "pass_at_1",
    "pass_at_k",
    "per_problem",
]
