"""Which token id fills padding: decided once by the data stage and recorded in its manifest.

The data stage pads packed rows with it and the trainer pads micro-batches with it, so both must agree;
the manifest says which it is and where it came from, so the trainer never guesses a literal.
"""

from __future__ import annotations

from typing import Any

from valley.manifest import pad_of


def pad_entry(tokenizer_dir: str) -> dict[str, Any]:
    """The manifest's `pad_id` and `pad_id_from` for the tokenizer in a local directory."""
    from transformers import AutoTokenizer

    pad_id, source = pad_of(AutoTokenizer.from_pretrained(tokenizer_dir))
    return {"pad_id": pad_id, "pad_id_from": source}
