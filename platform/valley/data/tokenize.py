"""Make a data run's documents and pack every subset from them, with Ray tasks (the tokenizer loads once
per worker process).

Documents group g (see document_plan.py) is templated, tokenized and written as
`documents/part-<g>.parquet`; subset group k becomes `tokenized/<subset>/part-<k>.parquet`, then a stats
sidecar marks it finished. Groups are fixed by the data, not by Ray's scheduling, so files are identical
run after run, and a re-run redoes only what is missing: a documents part that exists is not encoded
again, a subset group with its sidecar (holding the label audit's tally) is not packed again.
"""

from __future__ import annotations

import json
import posixpath
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from valley.data.chat import ChatEncoder, PortableEncoder
from valley.data.config import DataConfig
from valley.data.document_plan import DocGroup, DocumentPlan, PackGroup
from valley.data.documents import Policy, document_table, group_outcome
from valley.data.packing import pack_documents
from valley.storage import Storage

DOCUMENTS_DIR = "documents"
TOKENIZE_STATS_DIR = "_stats"


def part_name(group: int) -> str:
    return f"part-{group:05d}"


def group_rows(table: pa.Table, ids: list[str]) -> list[dict[str, str]]:
    """The rows (id, question, response) of `ids`, in that order, from the parts' traces: read by column,
    since Arrow's row dicts cost more than the columns they are made of."""
    table = table.filter(pc.is_in(table.column("id"), value_set=pa.array(ids, pa.string())))
    at = {trace_id: i for i, trace_id in enumerate(table.column("id").to_pylist())}
    questions, responses = table.column("question").to_pylist(), table.column("response").to_pylist()
    return [{"id": i, "question": questions[at[i]], "response": responses[at[i]]} for i in ids]


class DocumentPacker:
    """One worker process's encoder and storage: makes documents groups and packs subset groups."""

    def __init__(self, cfg_json: str, storage_root: str, out_dir: str, eot_id: int,
                 portable: dict[str, Any] | None = None):
        self.cfg = DataConfig.model_validate_json(cfg_json)
        self.storage = Storage(storage_root)
        self.out_dir = out_dir
        self.policy = Policy(self.cfg.max_seq_len, self.cfg.overlength, eot_id)
        self.portable = portable
        self._encoder: ChatEncoder | None = None

    @property
    def encoder(self) -> ChatEncoder:
        """Built on first use (a process that only packs never loads it): from the driver's spliced template
        and Rust tokenizer when it has them, so no transformers to import here."""
        if self._encoder is None:
            self._encoder = (PortableEncoder(self.portable) if self.portable
                             else ChatEncoder(self.cfg.tokenizer, self.cfg.system_prompt))
        return self._encoder

    def documents(self, group: DocGroup, packs: list[PackGroup]) -> dict[str, Any]:
        """Encode a documents group (unless its part exists), then pack the subset groups that are exactly
        it; returns its counts and those groups' stats."""
        name = f"{part_name(group.group)}.parquet"
        table, written = None, None
        # the part is written beside the packing (Arrow compresses without the GIL); both end with the task
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="documents-writer") as writer:
            if not self.storage.exists(self.out_dir, DOCUMENTS_DIR, name):
                table = self.encode(group)
                written = writer.submit(self.storage.write_parquet, table, self.out_dir, DOCUMENTS_DIR, name)
            stats = []
            for pack in packs:
                done = self.finished(pack)
                if done is None and table is None:
                    table = self.storage.read_parquet(self.out_dir, DOCUMENTS_DIR, name)
                stats.append(done if done is not None else self.pack_from(pack, table))
        if written is not None:
            written.result()  # its error, if any
        counts = table if table is not None else self.storage.read_parquet(self.out_dir, DOCUMENTS_DIR, name,
                                                                            columns=["n_tokens"])
        return {"group": group.group, "docs": counts.num_rows,
                "tokens": pc.sum(counts.column("n_tokens")).as_py() or 0, "packs": stats}

    def encode(self, group: DocGroup) -> pa.Table:
        tables = [self.storage.read_parquet(self.out_dir, "traces", part, columns=["id", "question", "response"])
                  for part in group.parts]
        ids = group.ids.to_pylist()
        rows = group_rows(pa.concat_tables(tables), ids)
        encoded = self.encoder.iter_encode([(r["question"], r["response"]) for r in rows])
        return document_table(ids, encoded, self.policy)

    def pack(self, pack: PackGroup) -> dict[str, Any]:
        """Pack a subset group from the documents parts that hold its traces (unless already packed)."""
        done = self.finished(pack)
        return done if done is not None else self.pack_from(pack, self.members(pack))

    def members(self, pack: PackGroup) -> pa.Table:
        """A subset group's documents in its order, read part by part (each part filtered as it is read)."""
        wanted = pack.ids
        tables = []
        for g in pack.docs:
            part = self.storage.read_parquet(self.out_dir, DOCUMENTS_DIR, f"{part_name(g)}.parquet")
            tables.append(part.filter(pc.is_in(part.column("id"), value_set=wanted)))
        table = pa.concat_tables(tables)
        if table.column("id").to_pylist() != pack.ids.to_pylist():
            raise RuntimeError(f"documents of {pack.subset} group {pack.group} are not its traces in its order")
        return table

    def finished(self, pack: PackGroup) -> dict[str, Any] | None:
        """A packed group's stats from its sidecar; None when it is missing or predates the label audit."""
        sub = posixpath.join(self.out_dir, "tokenized", pack.subset)
        sidecar = (TOKENIZE_STATS_DIR, f"{part_name(pack.group)}.json")
        if self.storage.exists(sub, *sidecar):
            stats = self.storage.read_json(sub, *sidecar)
            if "audit" in stats:
                return stats
        return None

    def pack_from(self, pack: PackGroup, docs: pa.Table) -> dict[str, Any]:
        """Write a subset group's shard and stats sidecar from its documents (`docs`, in its order)."""
        outcome = group_outcome(docs, self.cfg.max_seq_len)
        packed = pack_documents(outcome.trained, self.cfg.max_seq_len, self.encoder_pad_id(), self.cfg.packing)
        sub = posixpath.join(self.out_dir, "tokenized", pack.subset)
        self.storage.write_parquet(packed, sub, f"{part_name(pack.group)}.parquet")
        stats = {
            "subset": pack.subset,
            "group": pack.group,
            "docs_in": docs.num_rows,
            "docs": outcome.trained.num_rows,
            "sequences": packed.num_rows,
            "tokens": pc.sum(packed.column("n_tokens")).as_py() or 0,
            "loss_tokens": pc.sum(packed.column("n_loss_tokens")).as_py() or 0,
            "slots": pc.sum(pc.list_value_length(packed.column("input_ids"))).as_py() or 0,
            "truncated": outcome.truncated,
            "dropped": outcome.dropped,
            "audit": outcome.audit,
        }
        self.storage.write_json(stats, sub, TOKENIZE_STATS_DIR, f"{part_name(pack.group)}.json")
        return stats

    def encoder_pad_id(self) -> int:
        return self.portable["pad_id"] if self.portable else self.encoder.pad_id


@ray.remote(num_cpus=1)
def _import_data_tasks() -> None:
    """Nothing but the imports of the data stage's tasks (Ray, Arrow, tokenizers, ingest), in a worker."""
    import tokenizers  # noqa: F401

    import valley.data.ingest  # noqa: F401


def warm_workers() -> list[ray.ObjectRef]:
    """Import the data stage tasks' modules in one worker per CPU, started with the stage: a cold worker
    spends a second or two importing them, which this overlaps with the driver's own start instead of
    the first chunk's ingest and the first group's tokenizing."""
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return [_import_data_tasks.remote() for _ in range(cpus)]


_PACKERS: dict[str, DocumentPacker] = {}  # this worker process's packer, by its arguments


@ray.remote(num_cpus=1)
def _run_group(task: DocGroup | PackGroup, packs: list[PackGroup], portable: dict[str, Any] | None,
               **packer_args: Any) -> str:
    """Ray task: a documents group (with the subset groups packed beside it) or a subset group, by this
    process's DocumentPacker, built on its first task (so the tokenizer loads once per worker process).
    The stats come back as sorted JSON, as the sidecars have them."""
    key = json.dumps(packer_args, sort_keys=True)
    if key not in _PACKERS:
        _PACKERS.clear()
        _PACKERS[key] = DocumentPacker(**packer_args, portable=portable)
    packer = _PACKERS[key]
    out = packer.documents(task, packs) if isinstance(task, DocGroup) else packer.pack(task)
    return json.dumps(out, sort_keys=True)


def compact_lengths(stats: dict[str, Any]) -> dict[str, Any]:
    """A subset group's stats with its audit's per-trace lengths as an int32 array: the driver holds every
    group's until the audits are merged, a million Python ints (36 MB) at a million traces."""
    stats["audit"]["lengths"] = np.asarray(stats["audit"]["lengths"], np.int32)
    return stats


def run_documents(plan: DocumentPlan, encoder: ChatEncoder, cfg: DataConfig, storage: Storage, out_dir: str,
                  eot_id: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Make every documents group and pack every subset group, one Ray task per group; returns the
    documents groups' counts and the subset groups' stats.

    At most `tokenize_concurrency` (default: the cluster's CPUs) tasks run at once. A subset group that
    reads documents starts once the parts it reads are written, ahead of the documents still to make.
    Plain tasks rather than a Ray Data actor pool: they start at once in the workers warm_workers and
    ingest warmed. `eot_id` is the template's end-of-turn token, which the label audit checks every
    document trains on.
    """
    if not plan.documents:
        return [], []
    portable = ray.put(encoder.portable())
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    workers = min(len(plan.documents) + len(plan.packs), cfg.tokenize_concurrency or cpus)
    args = {"cfg_json": cfg.model_dump_json(), "storage_root": storage.root, "out_dir": out_dir, "eot_id": eot_id}
    reading = [p for p in plan.packs if not p.with_documents]
    waiting_on = [set(p.docs) for p in reading]
    todo = list(reversed(plan.documents))
    ready: list[PackGroup] = []
    running: dict[ray.ObjectRef, DocGroup | PackGroup] = {}
    doc_stats: list[dict[str, Any]] = []
    pack_stats: list[dict[str, Any]] = []
    while todo or ready or running:
        while (todo or ready) and len(running) < workers:
            task = ready.pop() if ready else todo.pop()
            packs = plan.packed_with(task.group) if isinstance(task, DocGroup) else []
            running[_run_group.remote(task, packs, portable, **args)] = task
        [done], _ = ray.wait(list(running), num_returns=1)
        task, stats = running.pop(done), json.loads(ray.get(done))
        if isinstance(task, PackGroup):
            pack_stats.append(compact_lengths(stats))
            continue
        pack_stats.extend(compact_lengths(s) for s in stats.pop("packs"))
        doc_stats.append(stats)
        for i, needs in enumerate(waiting_on):
            if task.group in needs:
                needs.discard(task.group)
                if not needs:
                    ready.insert(0, reading[i])
    return doc_stats, pack_stats

