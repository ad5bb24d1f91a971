"""How many optimizer steps an epoch has and how large they are, in either batch unit (pure).

One function for the trainer (`train/plan.py`) and for `valley plan` (`capacity/estimate.py`), so the steps
a study is priced at are the steps it runs.

- `rows`: a step is `global_batch_size` packed rows. Ray Data splits an epoch's rows equally over the
  workers (Ray Train's split drops the remainder, fewer than `num_workers` rows), each worker groups its
  share into micro-batches of `micro_batch_size` and `accum` micro-batches into a step.
- `examples`: a step is the next `global_batch_size` documents (traces) of the epoch's order, packed into
  as many rows as they need (`train/example_steps.py`).

What happens to an epoch's incomplete last group: `drop` leaves it out (reshuffled into the next epoch,
so other units go untrained each epoch), `partial` trains it as one smaller step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

BatchUnit = Literal["rows", "examples"]
LastStep = Literal["partial", "drop"]


@dataclass(frozen=True)
class StepCounts:
    """The step arithmetic of one epoch, in the run's batch unit (rows or examples)."""

    unit: BatchUnit
    last_step: LastStep
    units: int  # rows or examples in one epoch
    per_step: int  # units in a full step (global_batch_size)
    steps_per_epoch: int
    last_step_units: int  # units in the epoch's smaller last step; 0 when every step is full
    left_over: int  # units of an epoch that no step trains

    @property
    def trained(self) -> int:
        """Units trained per epoch."""
        return self.units - self.left_over

    def mean_per_step(self) -> float:
        """Units per step over an epoch (below `per_step` when the last step is smaller)."""
        return self.trained / self.steps_per_epoch if self.steps_per_epoch else 0.0

    def per_step_of(self, total: float) -> float:
        """Mean per step of a per-epoch quantity spread evenly over the units (tokens, or examples of a
        rows run): its trained share divided by the steps."""
        if not self.steps_per_epoch or not self.units:
            return 0.0
        return total * self.trained / self.units / self.steps_per_epoch


def row_steps(rows: int, global_batch: int, micro: int, world: int, last_step: LastStep) -> StepCounts:
    """Steps over packed rows: each worker's equal share in micro-batches, `accum` of them a step."""
    accum = global_batch // (micro * world)
    per_worker = rows // world
    per_worker_step = micro * accum
    full, rest = divmod(per_worker, per_worker_step)
    if last_step == "drop":
        trained_per_worker = full * per_worker_step
        steps, last = full, 0
    else:
        trained_per_worker = per_worker
        steps, last = full + (rest > 0), rest * world
    return StepCounts("rows", last_step, rows, global_batch, steps, last, rows - trained_per_worker * world)


def example_steps(examples: int, global_batch: int, last_step: LastStep) -> StepCounts:
    """Steps over documents: consecutive groups of `global_batch` in the epoch's order."""
    full, rest = divmod(examples, global_batch)
    if last_step == "partial" and rest:
        return StepCounts("examples", last_step, examples, global_batch, full + 1, rest, 0)
    return StepCounts("examples", last_step, examples, global_batch, full, 0, rest)


def step_counts(unit: BatchUnit, last_step: LastStep, *, rows: int, examples: int, global_batch: int, micro: int,
                world: int) -> StepCounts:
    """The epoch's steps in `unit` (the config's resolved `batch_unit` and `last_step`)."""
    if unit == "examples":
        return example_steps(examples, global_batch, last_step)
    return row_steps(rows, global_batch, micro, world, last_step)


def packed_rows(tokens: int, row_len: int, fill: float) -> int:
    """Rows an epoch's tokens pack into at a fill rate (for plans made before the data stage has run)."""
    return math.ceil(tokens / (row_len * fill))
