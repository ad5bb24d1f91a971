"""Tokenize and pack one subset with a Ray Data actor pool (the tokenizer loads once per actor).

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
import ray.data

from valley import schemas
from valley.data.audit import DocFacts, doc_facts, tally
from valley.data.chat import ChatEncoder
from valley.data.config import DataConfig
from valley.data.packing import Doc, PackedRow, one_per_row, pack_best_fit
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


def pack_docs(docs: list[Doc], cfg: DataConfig, pad_id: int) -> list[PackedRow]:
    if cfg.packing == "pack":
        return pack_best_fit(docs, cfg.max_seq_len, pad_id)
    return one_per_row(docs)


class TokenizePacker:
    """Ray Data actor: owns one ChatEncoder; turns a group of trace ids into one packed shard."""

    def __init__(self, cfg_json: str, storage_root: str, out_dir: str, eot_id: int):
        self.cfg = DataConfig.model_validate_json(cfg_json)
        self.storage = Storage(storage_root)
        self.out_dir = out_dir
        self.eot_id = eot_id
        self.encoder = ChatEncoder(self.cfg.tokenizer, self.cfg.system_prompt)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        stats = [self.one_group(json.loads(g)) for g in batch["group"]]
        return {"stats": [json.dumps(s, sort_keys=True) for s in stats]}

    def one_group(self, group: dict[str, Any]) -> dict[str, Any]:
        name = f"part-{group['group']:05d}"
        sub = posixpath.join(self.out_dir, "tokenized", group["subset"])
        if self.storage.exists(sub, TOKENIZE_STATS_DIR, f"{name}.json"):
            stats = self.storage.read_json(sub, TOKENIZE_STATS_DIR, f"{name}.json")
            if "audit" in stats:
                return stats
        wanted = pa.array(group["ids"], pa.string())
        tables = [
            self.storage.read_parquet(self.out_dir, "traces", part, columns=["id", "question", "response"])
            for part in group["parts"]
        ]
        table = pa.concat_tables(tables)
        table = table.filter(pc.is_in(table.column("id"), value_set=wanted))
        by_id = {r["id"]: r for r in table.to_pylist()}
        rows = [by_id[i] for i in group["ids"]]
        docs, dropped = encode_docs(self.encoder, rows, self.cfg, self.eot_id)
        packed = pack_docs(docs, self.cfg, self.encoder.pad_id)
        records = [r.as_record() for r in packed]
        self.storage.write_parquet(pa.Table.from_pylist(records, schema=schemas.TOKENIZED), sub, f"{name}.parquet")
        stats = {
            "subset": group["subset"],
            "group": group["group"],
            "docs_in": len(rows),
            "docs": len(docs),
            "sequences": len(records),
            "tokens": sum(r["n_tokens"] for r in records),
            "loss_tokens": sum(r["n_loss_tokens"] for r in records),
            "slots": sum(len(r["input_ids"]) for r in records),
            "truncated": dropped["truncated"],
            "dropped": dropped["dropped"],
            "audit": dropped["audit"],
        }
        self.storage.write_json(stats, sub, TOKENIZE_STATS_DIR, f"{name}.json")
        return stats


def run_tokenize(groups: list[dict[str, Any]], cfg: DataConfig, storage: Storage, out_dir: str,
                 eot_id: int) -> list[dict[str, Any]]:
    """Tokenize and pack every group (of every subset) in one Ray Data pass; returns per-group stats.

    Each group dict carries its `subset`, `group` number, `parts` and `ids` (see plan_groups); `eot_id` is
    the template's end-of-turn token, which the label audit checks every document trains on.
    """
    if not groups:
        return []
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    workers = min(len(groups), cfg.tokenize_concurrency or cpus)
    items = [{"group": json.dumps(g)} for g in groups]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        TokenizePacker,
        fn_constructor_kwargs={"cfg_json": cfg.model_dump_json(), "storage_root": storage.root, "out_dir": out_dir,
                               "eot_id": eot_id},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=1,
    )
    return [json.loads(r["stats"]) for r in ds.take_all()]
