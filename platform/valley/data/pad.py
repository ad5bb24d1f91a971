"""Which token id fills padding: decided once by the data stage and recorded in its manifest.

The data stage pads packed rows with it and the trainer pads micro-batches with it, so both must agree;
the manifest says which it is and where it came from, so the trainer never guesses a literal.
"""

from __future__ import annotations

from typing import Any


def pad_of(tokenizer: Any) -> tuple[int, str]:
    """(pad id, which token it is): the tokenizer's pad token, else its eos token, else 0."""
    if getattr(tokenizer, "pad_token_id", None) is not None:
        return int(tokenizer.pad_token_id), "pad_token_id"
    if getattr(tokenizer, "eos_token_id", None) is not None:
        return int(tokenizer.eos_token_id), "eos_token_id"
    return 0, "default"


def pad_entry(tokenizer_dir: str) -> dict[str, Any]:
    """The manifest's `pad_id` and `pad_id_from` for the tokenizer in a local directory."""
    from transformers import AutoTokenizer

    pad_id, source = pad_of(AutoTokenizer.from_pretrained(tokenizer_dir))
    return {"pad_id": pad_id, "pad_id_from": source}
