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
    # Benchmarks only: keep generating past end of sequence until the token budget (vLLM's `ignore_eos`),
    # so output lengths follow the requests' budgets; the stage never sets it.
    ignore_eos: bool = False


@dataclass(frozen=True)
class Request:
    question_id: str
    sample_idx: int
    prompt: str
    seed: int
    max_tokens: int | None = None  # this request's budget instead of Sampling.max_tokens (benchmarks' long tails)

    def budget(self, sampling: Sampling) -> int:
        """The token budget of this request under `sampling`."""
        return sampling.max_tokens if self.max_tokens is None else self.max_tokens


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


class AsyncBackend(ABC):
    """A backend that many callers feed at once (the stream pool's replicas): each `generate` call is one
    problem's samples, and the backend interleaves concurrent calls on one engine, so an engine never waits
    for the slowest sequence of somebody else's batch."""

    name: str = "base"

    @abstractmethod
    async def generate(self, requests: list[Request], sampling: Sampling) -> list[Completion]:
        """One completion per request, in request order; concurrent calls share the engine."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release devices/engines; the default holds nothing."""
