"""One rank's micro-batches of a `batch_unit: examples` epoch, step by step (reads its documents; no Ray).

Each step yields the same number of micro-batches on every rank, each of `micro_batch_size` rows of the
step's width: rows this rank does not have are all padding, with no trained targets, so ZeRO-3's
parameter gathers line up across ranks and the loss and gradient count only real documents.
"""

from __future__ import annotations

from collections.abc import Iterator

from valley.train.batches import MicroBatch, from_documents
from valley.train.config import TrainConfig
from valley.train.documents import load_documents
from valley.train.example_steps import StepLayout, epoch_layouts
from valley.train.plan import TrainPlan


def layouts(plan: TrainPlan, cfg: TrainConfig, epoch: int, world: int) -> list[StepLayout]:
    """Every step of one epoch as every rank computes it."""
    if plan.documents is None:
        raise ValueError("the plan of a batch_unit: examples run carries its document index")
    return epoch_layouts(plan.documents.lengths, cfg.global_batch_size, cfg.resolved_last_step(),
                         seed=cfg.seed, epoch=epoch, shuffle=cfg.shuffle, row_len=plan.row_len,
                         packed=plan.packed, world=world, micro=cfg.micro_batch_size)


def rank_steps(plan: TrainPlan, cfg: TrainConfig, epoch: int, start: int, rank: int, world: int
               ) -> Iterator[tuple[int, list[MicroBatch]]]:
    """(step index in the epoch, this rank's micro-batches) from step `start` on; the epoch's documents
    of this rank are read once, up front, and dropped as their step is handed out."""
    assert plan.documents is not None
    steps = layouts(plan, cfg, epoch, world)
    wanted = {d for layout in steps[start:] for row in layout.rows_of(rank) for d in row}
    docs = load_documents(plan.files, plan.documents, sorted(wanted))
    micro = cfg.micro_batch_size
    for i in range(start, len(steps)):
        layout = steps[i]
        rows = [[docs.pop(d) for d in row] for row in layout.rows_of(rank)]
        rows += [[] for _ in range(layout.micro_batches * micro - len(rows))]
        yield i, [from_documents(rows[k:k + micro], width=layout.width, pad_id=plan.pad_id)
                  for k in range(0, len(rows), micro)]
