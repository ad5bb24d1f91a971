"""The evaluation problems' index: the only thing decontamination holds in memory.

N-grams live in two flat numpy arrays (hash sorted, problem number), so the index is a few MB for
all of LiveCodeBench, is shipped to Ray workers once through the object store (numpy arrays are read
zero-copy there) and is probed with `searchsorted` instead of a Python set per problem. N-grams
shared by more than `max_problem_frequency` evaluation problems are boilerplate ("the first line
contains an integer t ...") and are left out, counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from valley.decontam.text import ngram_hashes, normalize_title, problem_keys


@dataclass
class EvalProblem:
    question_id: str
    question_content: str
    question_title: str | None = None
    platform: str | None = None


@dataclass
class EvalIndex:
    question_ids: list[str]
    hashes: np.ndarray  # uint64, sorted (a hash appears once per problem holding it)
    problem: np.ndarray  # int32, problem number of each hash
    n_ngrams: np.ndarray  # int32 per problem: distinct n-grams indexed (boilerplate excluded)
    titles: dict[str, list[int]]  # normalised title -> problems
    keys: dict[str, list[int]]  # URL / platform key -> problems
    n: int
    stats: dict[str, Any] = field(default_factory=dict)

    def overlaps(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(problem numbers, shared n-gram counts) for the distinct hashes `query` of one text."""
        if len(query) == 0 or len(self.hashes) == 0:
            return np.empty(0, np.int32), np.empty(0, np.int64)
        lo = np.searchsorted(self.hashes, query, "left")
        hit = self.hashes[np.minimum(lo, len(self.hashes) - 1)] == query
        if not hit.any():  # the usual case: one search, no second pass
            return np.empty(0, np.int32), np.empty(0, np.int64)
        lo = lo[hit]
        width = np.searchsorted(self.hashes, query[hit], "right") - lo
        # positions lo..hi-1 of every hit, without a Python loop
        starts = np.repeat(lo - np.cumsum(width) + width, width)
        positions = starts + np.arange(width.sum())
        counts = np.bincount(self.problem[positions], minlength=len(self.question_ids))
        found = np.flatnonzero(counts)
        return found.astype(np.int32), counts[found]


def build_index(problems: list[EvalProblem], *, n: int, max_problem_frequency: int, min_title_words: int) -> EvalIndex:
    per_problem = [ngram_hashes(p.question_content, n) for p in problems]
    if per_problem:
        all_hashes = np.concatenate(per_problem)
        owners = np.concatenate([np.full(len(h), i, np.int32) for i, h in enumerate(per_problem)])
    else:
        all_hashes, owners = np.empty(0, np.uint64), np.empty(0, np.int32)
    uniq, freq = np.unique(all_hashes, return_counts=True)
    common = uniq[freq > max_problem_frequency]
    keep = ~np.isin(all_hashes, common)
    order = np.argsort(all_hashes[keep], kind="stable")
    hashes, owner = all_hashes[keep][order], owners[keep][order]
    n_ngrams = np.bincount(owner, minlength=len(problems)).astype(np.int32)
    titles: dict[str, list[int]] = {}
    short_titles = 0
    keys: dict[str, list[int]] = {}
    for i, p in enumerate(problems):
        t = normalize_title(p.question_title or "")
        if len(t.split()) >= min_title_words:
            titles.setdefault(t, []).append(i)
        elif t:
            short_titles += 1
        for k in problem_keys(p.question_id, p.platform, p.question_title, p.question_content):
            keys.setdefault(k, []).append(i)
    stats = {
        "problems": len(problems),
        "ngrams": int(len(hashes)),
        "boilerplate_ngrams": int(len(common)),  # distinct n-grams left out (in too many problems)
        "problems_without_ngrams": int((n_ngrams == 0).sum()),  # too short: title/URL matches only
        "titles": len(titles),
        "titles_too_short": short_titles,
        "url_keys": len(keys),
        "platforms": dict(Counter((p.platform or "unknown") for p in problems)),
    }
    return EvalIndex([p.question_id for p in problems], hashes, owner, n_ngrams, titles, keys, n, stats)
