"""Golden bytes of the data stage's per-subset outputs, recorded by the code that tokenized every subset
on its own (before `documents/`), so that packing from shared documents is shown to write the same files.

`python tests/data_golden.py` (from the repository root; PYTHONPATH=<a checkout's platform/> records that
code, e.g. `git archive 47f5a5a platform | tar -x -C /tmp/old`, the commit before documents) rewrites
`golden/data_subset_hashes.json`; `test_data_documents.py` compares a fresh run against it. The corpus and
tokenizer are the demo's: their fingerprints are recorded, and a test whose inputs differ says so.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).resolve().parent / "golden" / "data_subset_hashes.json"
COMPARED = ("tokenized", "dropped", "audit")  # what each subset writes, and the train stage reads


def write_corpus(root: Path) -> Path:
    """600 demo traces, half labelled correct, in a JSONL file."""
    from valley.demo import make_traces

    rows = make_traces(600, seed=3)
    for i, row in enumerate(rows):
        row["correct"] = i % 2 == 0
    path = root / "traces.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def paper_like_subsets() -> list[dict[str, Any]]:
    """The paper's subset set in miniature: nested random sizes and four paired subsets beside them."""
    return [{"name": "r10", "kind": "random", "size": 10}, {"name": "r100", "kind": "random", "size": 100},
            {"name": "r300", "kind": "random", "size": 300},
            {"name": "ok", "kind": "correct", "size": 60}, {"name": "bad", "kind": "incorrect", "size": 60},
            {"name": "easy", "kind": "easy", "size": 40}, {"name": "hard", "kind": "hard", "size": 40}]


# Small groups, so that a subset's groups and the documents' groups do not line up; each over-length policy
# and both packings.
VARIANTS: dict[str, dict[str, Any]] = {
    "pack-drop": {"max_seq_len": 1024, "overlength": "drop", "packing": "pack", "group_docs": 64},
    "pack-truncate": {"max_seq_len": 330, "overlength": "truncate", "packing": "pack", "group_docs": 48},
    "none-drop": {"max_seq_len": 360, "overlength": "drop", "packing": "none", "group_docs": 80},
}


def config(variant: str, corpus: Path, tok: Path) -> dict[str, Any]:
    return {"name": f"golden-{variant}", "inputs": [str(corpus)], "tokenizer": str(tok), "chunk_rows": 128,
            "subsets": paper_like_subsets(), **VARIANTS[variant]}


def fingerprints(corpus: Path, tok: Path) -> dict[str, str]:
    import pyarrow

    return {"corpus": hashlib.sha256(corpus.read_bytes()).hexdigest(),
            "tokenizer": hashlib.sha256((tok / "tokenizer.json").read_bytes()).hexdigest(),
            "pyarrow": pyarrow.__version__}


def subset_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file a data run writes per subset (rows, stats sidecars, dropped, audit), and of
    the manifest's per-subset summaries."""
    hashes = {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
              for top in COMPARED for p in sorted((root / top).rglob("*")) if p.is_file()}
    subsets = json.loads((root / "manifest.json").read_text())["subsets"]
    for summary in subsets.values():
        summary.pop("path")  # under the run's directory, whose hash holds the inputs' (temporary) paths
    hashes["manifest.json#subsets"] = hashlib.sha256(json.dumps(subsets, sort_keys=True).encode()).hexdigest()
    return hashes


def record(work: Path) -> dict[str, Any]:
    from valley.data.config import DataConfig
    from valley.data.stage import run_data
    from valley.demo import build_demo_tokenizer
    from valley.storage import Storage

    corpus, tok = write_corpus(work), build_demo_tokenizer(work / "tok")
    out: dict[str, Any] = {"inputs": fingerprints(corpus, tok), "variants": {}}
    for variant in VARIANTS:
        storage = Storage(str(work / "store"))
        result = run_data(DataConfig(**config(variant, corpus, tok)), storage)
        out["variants"][variant] = subset_hashes(Path(storage.path(result.stage_dir)))
    return out


if __name__ == "__main__":
    import os
    import subprocess
    import tempfile

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from valley import runtime

    runtime.init(num_cpus=2)
    with tempfile.TemporaryDirectory() as tmp:
        golden = record(Path(tmp))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    golden["recorded_with"] = os.environ.get("VALLEY_GOLDEN_COMMIT", commit)
    GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN} ({sum(len(v) for v in golden['variants'].values())} files)")
