"""Check the inputs of a train run and size it (driver side, before any worker starts).

Everything that can be wrong with the inputs — an unfinished data stage, a missing subset, shards with the
wrong columns, rows longer than the config allows, too little data for one global batch — fails here with
the file and field named, instead of minutes later inside a worker. With `batch_unit: examples` the plan
also indexes every document's length (train/documents.py), from which every rank derives the same steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from valley import legacy
from valley.errors import ConfigError, InputError
from valley.manifest import Manifest
from valley.storage import SUCCESS, Storage
from valley.train.config import TrainConfig
from valley.train.documents import DocumentIndex, index_documents
from valley.train.step_arithmetic import StepCounts, step_counts


@dataclass(frozen=True)
class TrainPlan:
    """What every worker of one train run follows: validated inputs and the step arithmetic.

    Made once on the driver and handed to Ray Train as this object inside `train_loop_config` (Ray pickles
    that dict and `valley` is importable on every worker): the fields keep their types on the way, and a
    worker cannot change what the others see. What only a worker knows (its local copies of the model)
    lives beside it on the worker, not in it.
    """

    files: tuple[str, ...]  # the subset's tokenized shards (URIs)
    rows: int
    tokens: int
    loss_tokens: int
    seq_len: int  # what the data stage packed to
    max_seq_len: int  # longest row a micro-batch may hold: the config's, else the data's seq_len
    pad_id: int  # the data stage's padding token (its manifest's pad_id)
    accum: int | None  # rows unit: micro-batches per worker in a full step; examples: None (sized per step)
    steps_per_epoch: int
    total_steps: int
    rows_left_over_per_epoch: int
    examples: int  # documents (traces) in the subset: the examples of one epoch
    counts: StepCounts  # the epoch's step arithmetic in the run's batch unit
    packed: bool  # the data stage packed several documents a row (else `packing: none`)
    documents: DocumentIndex | None  # examples unit: every document's length, in shard order
    model_uri: str
    tokenizer_uri: str
    storage_root: str
    out_dir: str
    config_hash: str

    @property
    def row_len(self) -> int:
        """What the examples unit packs each step's documents to: the data stage's row length."""
        return self.seq_len or self.max_seq_len

    @property
    def unit(self) -> str:
        return self.counts.unit

    def examples_per_step(self) -> float:
        """Mean examples per step over an epoch (a rows run: its rows' share of the documents)."""
        if self.counts.unit == "examples":
            return self.counts.mean_per_step()
        return self.counts.per_step_of(self.examples)

    def tokens_per_step(self) -> float:
        """Mean tokens per step over an epoch."""
        return self.counts.per_step_of(self.tokens)


# column -> (is a list, check of the (value) type)
REQUIRED = {
    "input_ids": (True, pa.types.is_integer),
    "loss_mask": (True, pa.types.is_integer),
    "position_ids": (True, pa.types.is_integer),
    "n_tokens": (False, pa.types.is_integer),
    "trace_ids": (True, pa.types.is_string),
}


def _check_schema(schema: pa.Schema, uri: str) -> None:
    for name, (is_list, ok) in REQUIRED.items():
        if name not in schema.names:
            raise InputError("tokenized shard lacks a required column", file=uri, field=name)
        typ = schema.field(name).type
        inner = typ.value_type if pa.types.is_list(typ) or pa.types.is_large_list(typ) else None
        if (inner is None) == is_list or not ok(inner if is_list else typ):
            raise InputError(f"column has type {typ}, expected {'a list of ' if is_list else ''}{ok.__name__[3:]}",
                             file=uri, field=name)


def resolve_model(storage: Storage, path: str) -> str:
    """URI of an HF model dir: a base model, a previous run's export, or a previous train stage dir."""
    st, rel = storage.resolve(path, must_exist=True)
    if st.exists(rel, "config.json") if rel else st.exists("config.json"):
        return st.uri(rel) if rel else st.uri()
    if st.exists(rel, "model", "config.json") if rel else st.exists("model", "config.json"):
        return st.uri(rel, "model") if rel else st.uri("model")
    raise ConfigError(f"model {path!r}: no config.json at {st.uri(rel) if rel else st.uri()} (nor under model/); "
                      "give a Hugging Face model directory or a finished train run")


def _saved_tokenizer_pad(data_st: Storage, tokenizer_parts: tuple[str, ...]) -> int:
    def load() -> Any:
        from transformers import AutoTokenizer

        from valley.train.transfer import local_dir

        return AutoTokenizer.from_pretrained(local_dir(data_st, "/".join(tokenizer_parts)))

    return legacy.pad_id_before_manifests(load)


def plan_run(cfg: TrainConfig, storage: Storage, out_dir: str) -> TrainPlan:
    """Validated inputs and the step arithmetic every worker follows."""
    data_st, data_rel = storage.resolve(cfg.data, must_exist=True)
    data_uri = data_st.uri(data_rel) if data_rel else data_st.uri()
    parts = (data_rel,) if data_rel else ()
    if not data_st.exists(*parts, SUCCESS):
        raise ConfigError(f"data stage output {data_uri} is not finished (no {SUCCESS}); run `valley data` first")
    data_st.require_intact(data_rel)
    manifest = Manifest.read(data_st, *parts)
    manifest.subset(cfg.subset, data_uri)
    seq_len = manifest.seq_len or 0
    max_seq_len = cfg.max_seq_len if cfg.max_seq_len is not None else seq_len
    if max_seq_len <= 0:
        raise ConfigError(f"{data_uri}/manifest.json has no seq_len; set max_seq_len in the train config")
    if seq_len > max_seq_len:
        raise ConfigError(f"data was packed to seq_len={seq_len} > max_seq_len={max_seq_len}")
    shard_parts = (*parts, "tokenized", cfg.subset)
    names = data_st.list(*shard_parts, suffix=".parquet")
    if not names:
        raise InputError("no tokenized shards", file=data_st.uri(*shard_parts))
    files, rows, tokens, loss_tokens, examples = [], 0, 0, 0, 0
    for name in names:
        uri, path = data_st.uri(*shard_parts, name), data_st.path(*shard_parts, name)
        schema = pq.read_schema(path, filesystem=data_st.fs)
        _check_schema(schema, uri)
        wanted = [c for c in ("n_tokens", "n_loss_tokens") if c in schema.names]
        table = pq.read_table(path, columns=[*wanted, "n_docs" if "n_docs" in schema.names else "trace_ids"],
                              filesystem=data_st.fs)
        files.append(uri)
        rows += table.num_rows
        tokens += int(pc.sum(table.column("n_tokens")).as_py() or 0)
        if "n_loss_tokens" in table.column_names:
            loss_tokens += int(pc.sum(table.column("n_loss_tokens")).as_py() or 0)
        docs = table.column("n_docs") if "n_docs" in table.column_names else \
            pc.list_value_length(table.column("trace_ids"))
        examples += int(pc.sum(docs).as_py() or 0)
    unit, last_step = cfg.resolved_batch_unit(), cfg.resolved_last_step()
    documents = index_documents(files, seq_len or max_seq_len) if unit == "examples" else None
    if documents is not None:
        examples = len(documents.lengths)
    counts = step_counts(unit, last_step, rows=rows, examples=examples, global_batch=cfg.global_batch_size,
                         micro=cfg.micro_batch_size, world=cfg.num_workers)
    if counts.steps_per_epoch == 0:
        raise ConfigError(f"{counts.units} {unit} in subset {cfg.subset!r} are fewer than one global batch "
                          f"of {cfg.global_batch_size}; lower global_batch_size, use more data or set "
                          "last_step: partial")
    tokenizer_parts = (*parts, "tokenizer")
    if not data_st.exists(*tokenizer_parts):
        raise ConfigError(f"{data_uri} has no tokenizer/ directory")
    return TrainPlan(
        files=tuple(files),
        rows=rows,
        tokens=tokens,
        loss_tokens=loss_tokens,
        seq_len=seq_len,
        max_seq_len=max_seq_len,
        pad_id=manifest.pad_id if manifest.pad_id is not None else _saved_tokenizer_pad(data_st, tokenizer_parts),
        accum=cfg.grad_accum_steps() if unit == "rows" else None,
        steps_per_epoch=counts.steps_per_epoch,
        total_steps=counts.steps_per_epoch * cfg.epochs,
        rows_left_over_per_epoch=counts.left_over if unit == "rows" else 0,
        examples=examples,
        counts=counts,
        packed=manifest.packing != "none",
        documents=documents,
        model_uri=resolve_model(storage, cfg.model),
        tokenizer_uri=data_st.uri(*tokenizer_parts),
        storage_root=storage.root,
        out_dir=out_dir,
        config_hash=cfg.config_hash(),
    )

