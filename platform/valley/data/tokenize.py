"""Tokenize and pack one subset with Ray tasks (the tokenizer loads once per worker process).

The subset's rows are cut, in storage order, into groups of `group_docs` documents; group g becomes
`tokenized/<subset>/part-<g>.parquet`, then a stats sidecar marks it finished. Groups are fixed by the
data, not by Ray's scheduling, so shards are identical run after run, and a re-run redoes only the groups
whose sidecar is missing (or lacks the label audit's tally: written before audits existed).
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray

from valley.data.audit import DocFacts, doc_facts, tally
from valley.data.chat import ChatEncoder, PortableEncoder
from valley.data.config import DataConfig
from valley.data.packing import Doc, pack_table
from valley.storage import Storage

TOKENIZE_STATS_DIR = "_stats"


def plan_groups(subset: str, members: pa.Table, group_docs: int) -> list[dict[str, Any]]:
    """Cut a subset (columns id, part, source_file, source_row) into fixed groups in storage order."""
    ordered = members.sort_by([("part", "ascending"), ("source_file", "ascending"), ("source_row", "ascending"),
                               ("id", "ascending")])
    groups = []
    for g, start in enumerate(range(0, ordered.num_rows, group_docs)):
        piece = ordered.slice(start, group_docs)
        groups.append({"subset": subset, "group": g, "parts": sorted(set(piece.column("part").to_pylist())),
                       "ids": piece.column("id").to_pylist()})
    return groups


def encode_docs(encoder: ChatEncoder, rows: list[dict], cfg: DataConfig,
                eot_id: int) -> tuple[list[Doc], dict[str, Any]]:
    """Template + tokenize rows, then apply the over-length policy. Returns docs and what was dropped,
    with the label audit's tally of the rows (`audit`; `eot_id` is the template's end-of-turn token)."""
    encoded = encoder.iter_encode([(r["question"], r["response"]) for r in rows])
    docs, dropped, truncated, no_loss, facts = [], [], 0, [], []
    for row, enc in zip(rows, encoded):
        ids, mask = enc.input_ids, enc.loss_mask
        n = len(ids)
        if n > cfg.max_seq_len:
            if cfg.overlength == "drop":
                dropped.append({"id": row["id"], "n_tokens": n, "reason": "overlength"})
                facts.append(DocFacts(row["id"], n, cut=True))
                continue
            ids, mask = ids[: cfg.max_seq_len], mask[: cfg.max_seq_len]
            truncated += 1
        if not any(mask):
            no_loss.append({"id": row["id"], "n_tokens": len(ids), "reason": "no_assistant_tokens"})
            facts.append(DocFacts(row["id"], n, cut=n > cfg.max_seq_len))
            continue
        docs.append(Doc(row["id"], ids, mask))
        facts.append(doc_facts(row["id"], enc.input_ids, enc.loss_mask, enc.offsets, enc.text, enc.prompt_chars,
                               len(ids), eot_id))
    return docs, {"dropped": dropped + no_loss, "truncated": truncated, "audit": tally(facts)}


def group_rows(table: pa.Table, ids: list[str]) -> list[dict[str, str]]:
    """The rows (id, question, response) of `ids`, in that order, from the parts' traces: read by column,
    since Arrow's row dicts cost more than the columns they are made of."""
    table = table.filter(pc.is_in(table.column("id"), value_set=pa.array(ids, pa.string())))
    at = {trace_id: i for i, trace_id in enumerate(table.column("id").to_pylist())}
    questions, responses = table.column("question").to_pylist(), table.column("response").to_pylist()
    return [{"id": i, "question": questions[at[i]], "response": responses[at[i]]} for i in ids]


class TokenizePacker:
    """Owns one ChatEncoder (one per worker process, see _tokenize_group); turns a group of trace ids into
    one packed shard."""

    def __init__(self, cfg_json: str, storage_root: str, out_dir: str, eot_id: int,
                 portable: dict[str, Any] | None = None):
        self.cfg = DataConfig.model_validate_json(cfg_json)
        self.storage = Storage(storage_root)
        self.out_dir = out_dir
        self.eot_id = eot_id
        # The driver's spliced template and Rust tokenizer when it has them: no transformers to import here.
        self.encoder = PortableEncoder(portable) if portable else ChatEncoder(self.cfg.tokenizer, self.cfg.system_prompt)

    def one_group(self, group: dict[str, Any]) -> dict[str, Any]:
        name = f"part-{group['group']:05d}"
        sub = posixpath.join(self.out_dir, "tokenized", group["subset"])
        if self.storage.exists(sub, TOKENIZE_STATS_DIR, f"{name}.json"):
            stats = self.storage.read_json(sub, TOKENIZE_STATS_DIR, f"{name}.json")
            if "audit" in stats:
                return stats
        tables = [
            self.storage.read_parquet(self.out_dir, "traces", part, columns=["id", "question", "response"])
            for part in group["parts"]
        ]
        rows = group_rows(pa.concat_tables(tables), group["ids"])
        docs, dropped = encode_docs(self.encoder, rows, self.cfg, self.eot_id)
        packed = pack_table(docs, self.cfg.max_seq_len, self.encoder.pad_id, self.cfg.packing)
        self.storage.write_parquet(packed, sub, f"{name}.parquet")
        stats = {
            "subset": group["subset"],
            "group": group["group"],
            "docs_in": len(rows),
            "docs": len(docs),
            "sequences": packed.num_rows,
            "tokens": pc.sum(packed.column("n_tokens")).as_py() or 0,
            "loss_tokens": pc.sum(packed.column("n_loss_tokens")).as_py() or 0,
            "slots": pc.sum(pc.list_value_length(packed.column("input_ids"))).as_py() or 0,
            "truncated": dropped["truncated"],
            "dropped": dropped["dropped"],
            "audit": dropped["audit"],
        }
        self.storage.write_json(stats, sub, TOKENIZE_STATS_DIR, f"{name}.json")
        return stats


@ray.remote(num_cpus=1)
def _import_tokenize() -> None:
    """Nothing but this module's imports (Ray, Arrow, tokenizers), done in a worker process."""
    import tokenizers  # noqa: F401


def warm_workers() -> list[ray.ObjectRef]:
    """Import the tokenize tasks' modules in one worker per CPU, started with the stage: a cold worker
    spends a second or two importing them, which this overlaps with ingest instead of tokenizing."""
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return [_import_tokenize.remote() for _ in range(cpus)]


_PACKERS: dict[str, TokenizePacker] = {}  # this worker process's packer, by its arguments


@ray.remote(num_cpus=1)
def _tokenize_group(group: dict[str, Any], portable: dict[str, Any] | None, **packer_args: Any) -> str:
    """Ray task: pack one group with this process's TokenizePacker, built on its first group (so the
    tokenizer loads once per worker process, as it did once per actor, without an actor's start-up).
    The stats come back as sorted JSON, as the sidecar has them."""
    key = json.dumps(packer_args, sort_keys=True)
    if key not in _PACKERS:
        _PACKERS.clear()
        _PACKERS[key] = TokenizePacker(**packer_args, portable=portable)
    return json.dumps(_PACKERS[key].one_group(group), sort_keys=True)


def run_tokenize(groups: list[dict[str, Any]], cfg: DataConfig, storage: Storage, out_dir: str,
                 eot_id: int) -> list[dict[str, Any]]:
    """Tokenize and pack every group (of every subset), one Ray task per group; returns per-group stats.

    At most `tokenize_concurrency` (default: the cluster's CPUs) groups run at once. Plain tasks rather
    than a Ray Data actor pool: they start at once in the workers warm_workers and ingest warmed (a fresh
    actor process took seconds to start, and Ray Data tasks started the second group only when the first
    had finished). Each group dict carries its `subset`, `group` number, `parts` and `ids` (see
    plan_groups); `eot_id` is the template's end-of-turn token, which the label audit checks every
    document trains on.
    """
    if not groups:
        return []
    portable = ray.put(ChatEncoder(cfg.tokenizer, cfg.system_prompt).portable())
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    workers = min(len(groups), cfg.tokenize_concurrency or cpus)
    args = {"cfg_json": cfg.model_dump_json(), "storage_root": storage.root, "out_dir": out_dir, "eot_id": eot_id}
    todo = list(reversed(groups))
    running: list[ray.ObjectRef] = []
    stats = []
    while todo or running:
        while todo and len(running) < workers:
            running.append(_tokenize_group.remote(todo.pop(), portable, **args))
        done, running = ray.wait(running, num_returns=1)
        stats.extend(json.loads(s) for s in ray.get(done))
    return stats
