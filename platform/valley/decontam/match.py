"""Matching training questions against the evaluation index (pure; the Ray Data UDF wraps it).

A training question is contaminated by an evaluation problem when any enabled kind fires:
- ngram: it holds at least `min_overlap` of the problem's (non-boilerplate) n-grams, and at least
  `min_shared` of them;
- title: its first line (or its title column) is the problem's title, after normalisation;
- url: it cites the problem's page (Codeforces / AtCoder / LeetCode URL of the same problem).
"""

from __future__ import annotations

from dataclasses import dataclass

from valley.decontam.index import EvalIndex
from valley.decontam.text import ngram_hashes, title_candidates, url_keys

KINDS = ("ngram", "title", "url")


@dataclass(frozen=True)
class MatchRule:
    kinds: tuple[str, ...] = KINDS
    min_overlap: float = 0.2
    min_shared: int = 1


@dataclass
class Match:
    problem: int  # index into EvalIndex.question_ids
    kinds: list[str]
    shared: int  # n-grams in common
    overlap: float  # shared / the problem's indexed n-grams


def match_question(index: EvalIndex, rule: MatchRule, question: str, *, title: str | None = None,
                   url: str | None = None) -> list[Match]:
    found: dict[int, Match] = {}
    counts: dict[int, tuple[int, float]] = {}  # problem -> (shared n-grams, overlap), for every kind's rows
    if rule.kinds:
        problems, shared = index.overlaps(ngram_hashes(question, index.n))
        for p, s in zip(problems.tolist(), shared.tolist()):
            counts[p] = (s, s / index.n_ngrams[p] if index.n_ngrams[p] else 0.0)

    def hit(p: int, kind: str) -> None:
        s, overlap = counts.get(p, (0, 0.0))
        m = found.setdefault(p, Match(p, [], s, overlap))
        if kind not in m.kinds:
            m.kinds.append(kind)

    if "ngram" in rule.kinds:
        for p, (s, overlap) in counts.items():
            if s >= rule.min_shared and overlap >= rule.min_overlap:
                hit(p, "ngram")
    if "title" in rule.kinds and index.titles:
        for t in title_candidates(question, title):
            for p in index.titles.get(t, ()):
                hit(p, "title")
    if "url" in rule.kinds and index.keys:
        for k in url_keys(question) | (url_keys(url) if url else set()):
            for p in index.keys.get(k, ()):
                hit(p, "url")
    return sorted(found.values(), key=lambda m: m.problem)
