"""The one interface every generation backend implements, and the per-sample seed rule.

A request is one sample (a prompt and its own seed), so a sample's tokens do not depend on which
other requests share its batch, replica or run: resuming or re-sharding cannot change results.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    max_tokens: int


@dataclass(frozen=True)
class Request:
    question_id: str
    sample_idx: int
    prompt: str
    seed: int


@dataclass(frozen=True)
class Completion:
    question_id: str
    sample_idx: int
    text: str
    n_tokens: int  # generated tokens, the end-of-sequence token included when the model stopped
    # "stop" (end of sequence) | "length" (max_tokens reached) | "context" (the context window filled up
    # before max_tokens: prompt + output reached max_model_len or the model's window)
    finish_reason: str


def sample_seed(seed: int, question_id: str, sample_idx: int) -> int:
    """A 63-bit seed from (run seed, problem, sample): stable across processes and Python versions."""
    digest = hashlib.sha256(f"{seed}\x00{question_id}\x00{sample_idx}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class Backend(ABC):
    """Generates completions for a list of requests with one sampling setting."""

    name: str = "base"

    @abstractmethod
    def generate(self, requests: list[Request], sampling: Sampling) -> list[Completion]:
        """One completion per request, in request order."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to release
        """Release devices/engines; the default holds nothing."""
