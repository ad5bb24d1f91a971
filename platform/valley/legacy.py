"""Reading what older versions of valley wrote: every migration shim in one place.

A finished study must stay finished across upgrades (its stages skipped, never redone), so the code reads
markers, manifests, graphs and config names written before a format changed. Each shim below says which
older layout it reads and until when it stays; `SHIMS` lists them for the next engineer. "Until the next
storage format" means: until a release that declares a new storage format version and re-runs old studies,
because removing the shim would change config hashes or refuse finished runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import AliasChoices

# name -> (what older layout it reads, when it may go)
SHIMS: dict[str, tuple[str, str]] = {
    "renamed_result_fields": ("stage markers written before results named their directory `stage_dir` "
                              "(`output_dir`) and generate's files `samples`/`problems` (`samples_uri`, "
                              "`problems_uri`), before 2026-11", "the next storage format"),
    "paths_under_stage": ("stage markers holding absolute paths or URIs instead of root-relative paths "
                          "(before 2026-11)", "the next storage format"),
    "fault_alias": ("configs using the fault-injection fields' old names (train `debug_*`, generate "
                    "`pool.crash_once_file`)",
                    "2027-06-01 (configs only; no stored hash depends on it)"),
    "TRAIN_HASHED_ONLY_WHEN_SET": ("train configs hashed before `max_seq_len`, `batch_unit` and `last_step` "
                                   "existed", "the next storage format"),
    "GENERATE_HASHED_ONLY_WHEN_SET": ("generate configs hashed before `rope_scaling`/`hf_overrides` existed",
                                      "the next storage format"),
    "REPORT_HASHED_ONLY_WHEN_SET": ("report configs hashed before `comparisons` existed", "the next storage format"),
    "RUN_SPEC_FIELDS_WHEN_SET": ("report runs (RunSpec) hashed before `replicate`, `train_run`, `data` and `data_subset` existed",
                                 "the next storage format"),
    "pad_id_before_manifests": ("data manifests written before they recorded `pad_id` (before 2026-11)",
                                "the next storage format"),
    "subset_request_fields": ("study graphs written before subsets were definitions (before 2026-12): "
                              "`kind` and `sources` beside name and size", "2027-06-01 (graph.json is rewritten "
                              "by every `valley run`)"),
    "node_fields_of_old_graph": ("study graphs (`graph.json`) written before node parameters were typed "
                                 "(before 2026-12): `follows` inside params, train nodes without `tag`",
                                 "2027-06-01 (graph.json is rewritten by every `valley run`)"),
}

# Result fields renamed since markers were first written: old name -> new name.
_OLD_RESULT_FIELDS: dict[str, str] = {"output_dir": "stage_dir", "samples_uri": "samples", "problems_uri": "problems"}

TRAIN_HASHED_ONLY_WHEN_SET: frozenset[str] = frozenset({"max_seq_len", "batch_unit", "last_step"})
GENERATE_HASHED_ONLY_WHEN_SET: frozenset[str] = frozenset({"rope_scaling", "hf_overrides"})
REPORT_HASHED_ONLY_WHEN_SET: frozenset[str] = frozenset({"comparisons"})
RUN_SPEC_FIELDS_WHEN_SET: frozenset[str] = frozenset({"replicate", "train_run", "data", "data_subset"})


def renamed_result_fields(summary: Mapping[str, Any]) -> dict[str, Any]:
    """A marker's summary with old field names replaced by new ones (a new name already there wins)."""
    data = dict(summary)
    for old, new in _OLD_RESULT_FIELDS.items():
        if old in data:
            value = data.pop(old)
            data.setdefault(new, value)
    return data


def paths_under_stage(value: Any, out: str) -> Any:
    """Old markers held absolute paths or URIs (`<root>/<out>/...`): keep the part from `out` on, so a marker
    read after the storage root moved still names files under the root. Root-relative paths pass as they are."""

    def relative(path: str) -> str:
        bare = path.split("://", 1)[-1]
        if not bare.startswith("/") and "://" not in path:
            return path
        if bare.endswith(f"/{out}"):
            return out
        at = bare.rfind(f"/{out}/")
        return bare[at + 1:] if at >= 0 else path

    return map_paths(value, relative)


def map_paths(value: Any, fn: Callable[[str], str]) -> Any:
    """Apply `fn` to every string in a str, list or dict of them (path fields of stage results)."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list):
        return [map_paths(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: map_paths(v, fn) for k, v in value.items()}
    return value


def fault_alias(name: str, old: str | None = None) -> AliasChoices:
    """A fault-injection field's name and its old name (default `debug_*`), both accepted when a config loads."""
    return AliasChoices(name, old or name.replace("fault_", "debug_", 1))


def pad_id_before_manifests(load_tokenizer: Callable[[], Any]) -> int:
    """The pad id of a data run whose manifest has none: its saved tokenizer's pad (else eos), else 0, the
    trainer's padding before manifests recorded it, so those runs train as they did."""
    from valley.manifest import pad_of

    try:
        return pad_of(load_tokenizer())[0]
    except Exception:  # noqa: BLE001 - an unreadable tokenizer: the old default
        return 0


def node_fields_of_old_graph(node: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(params, follows) of a node of `graph.json`; graphs before typed parameters kept `follows` inside
    the params and had no train `tag` (the node name after `<experiment>-<student>-`)."""
    params = dict(node.get("params") or {})
    follows = list(node.get("follows") or params.pop("follows", None) or [])
    params.pop("follows", None)
    if node["kind"] == "train" and "tag" not in params:
        params["tag"] = node["name"].split(f"-{node.get('student')}-", 1)[-1]
    return params, follows


def subset_request_fields(request: Mapping[str, Any]) -> dict[str, Any]:
    """A data node's subset request as `graph.json` holds it now (name, size, definition as JSON); older
    graphs held `kind` and `sources` beside name and size."""
    if "definition" in request:
        return dict(request)
    import json

    definition = {k: v for k, v in request.items() if k not in ("name", "size")}
    return {"name": request["name"], "size": request["size"], "definition": json.dumps(definition, sort_keys=True)}
