"""The end-of-turn token: the special token the student's chat template writes right after a reply.

A trained student stops by emitting it, so the label audit (audit.py) checks that every document trains
on it. It is read from the template itself rather than a list of known models (ChatML `<|im_end|>`,
Llama 3 `<|eot_id|>`, Gemma `<end_of_turn>`, ...): render a reply, tokenize what follows it, and take the
first special token there.
"""

from __future__ import annotations

from typing import Any

from valley.errors import ConfigError

PROBE = "valley-end-of-turn-probe"


def special_ids(tok: Any) -> dict[int, str]:
    """Ids of the tokenizer's special tokens (added tokens marked special, and the named ones)."""
    ids = {int(i): t.content for i, t in getattr(tok, "added_tokens_decoder", {}).items() if t.special}
    for i in getattr(tok, "all_special_ids", []):
        ids.setdefault(int(i), tok.convert_ids_to_tokens(int(i)))
    return ids


def end_of_turn(tok: Any, where: str) -> tuple[int, str]:
    """(id, text) of the special token the chat template writes after an assistant reply.

    `where` names the tokenizer in errors. A template that writes no special token after a reply is a
    ConfigError: a student trained on it would have no token to stop with.
    """
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": PROBE}]
    text = tok.apply_chat_template(messages, tokenize=False)
    at = text.rfind(PROBE)
    if at < 0:
        raise ConfigError(f"the chat template of the tokenizer at {where} does not write the assistant's reply; "
                          "cannot find its end-of-turn token")
    tail = text[at + len(PROBE):]
    special = special_ids(tok)
    for token_id in tok.backend_tokenizer.encode(tail, add_special_tokens=False).ids:
        if token_id in special:
            return token_id, special[token_id]
    raise ConfigError(f"the chat template of the tokenizer at {where} writes no special token after an assistant "
                      f"reply (it writes {tail!r}); a student trained on it has no end-of-turn token to stop with")
