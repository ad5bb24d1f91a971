"""Text keys for contamination checks: normalised word n-grams (64-bit hashes), titles, problem URLs.

Pure functions. Normalisation makes formatting irrelevant (case, punctuation, LaTeX dollars, markdown,
whitespace): NFKC, case-folded, every run of non-alphanumerics is one space. N-gram hashes must agree
between the driver (which indexes the evaluation problems) and every Ray worker, so tokens are hashed
with blake2b (Python's own `hash` is salted per process) and combined polynomially in numpy.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from functools import lru_cache

import numpy as np

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
_MULT = np.uint64(0x100000001B3)  # odd 64-bit multiplier (FNV prime); arithmetic wraps mod 2**64


def normalize(text: str) -> str:
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def words(text: str) -> list[str]:
    return normalize(text).split()


@lru_cache(maxsize=1 << 20)
def token_hash(token: str) -> int:
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "little")


def ngram_hashes(text: str, n: int) -> np.ndarray:
    """Distinct hashes of the word n-grams of `text` (sorted uint64); empty when it has fewer than n words."""
    toks = words(text)
    if len(toks) < n:
        return np.empty(0, np.uint64)
    t = np.array(list(map(token_hash, toks)), np.uint64)  # map: no generator frame per token
    width = len(toks) - n + 1
    h = np.zeros(width, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            h = h * _MULT + t[j: j + width]
    return np.unique(h)


# ---- titles -------------------------------------------------------------------------------------------

_INDEX_PREFIX = re.compile(r"^\s*(?:problem\s+)?[A-Za-z]\d?\s*[.)]\s+")  # "A. Short Sort", "B1) …"
# A trailing "(contest, year)" group, one level of nesting allowed: "(Codeforces Round 718 (Div. 1), 2021)".
_TRAILING_GROUP = re.compile(r"\s*\(((?:[^()]|\([^()]*\))*)\)\s*$")
_CONTEST_WORDS = re.compile(r"\b(?:19|20)\d\d\b|round|contest|div\.|cup|olympiad", re.IGNORECASE)


def normalize_title(title: str) -> str:
    """Comparable title: no contest index ("A."), no trailing "(contest, year)", no slug dashes.
    Other parentheses stay: "(Easy Version)" and "(Hard Version)" are different problems."""
    t = _INDEX_PREFIX.sub("", title.strip().lstrip("#").strip())
    m = _TRAILING_GROUP.search(t)
    if m and _CONTEST_WORDS.search(m.group(1)):
        t = t[: m.start()]
    return normalize(t)


def first_line(text: str) -> str:
    """The question's first non-empty line: where corpora built from contest sites put the title."""
    for line in text.splitlines():
        if line.strip():
            return line
    return ""


def title_candidates(question: str, title: str | None = None) -> set[str]:
    out = {normalize_title(first_line(question))}
    if title:
        out.add(normalize_title(title))
    return {t for t in out if t}


# ---- URLs -> problem keys -----------------------------------------------------------------------------

_URL_PATTERNS = (
    (re.compile(r"codeforces\.com/(?:problemset/problem|contest|gym)/(\d+)/(?:problem/)?([A-Za-z]\d?)"),
     lambda m: f"codeforces:{m.group(1)}_{m.group(2).upper()}"),
    (re.compile(r"atcoder\.jp/contests/[\w-]+/tasks/([\w-]+)"), lambda m: f"atcoder:{m.group(1).lower()}"),
    (re.compile(r"leetcode\.(?:com|cn)/problems/([a-z0-9-]+)"), lambda m: f"leetcode:{m.group(1)}"),
)


def url_keys(text: str) -> set[str]:
    """Problem keys (`codeforces:1873_A`, `atcoder:abc300_a`, `leetcode:two-sum`) of URLs in `text`."""
    keys: set[str] = set()
    for pattern, key in _URL_PATTERNS:
        keys.update(key(m) for m in pattern.finditer(text))
    return keys


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.casefold()).strip("-")


def problem_keys(question_id: str, platform: str | None, title: str | None, content: str) -> set[str]:
    """The keys an evaluation problem is known by: its LCB id on its platform, and any URL it cites."""
    keys = url_keys(content)
    p = (platform or "").lower()
    if p == "codeforces" and re.fullmatch(r"\d+_[A-Za-z]\d?", question_id):
        keys.add(f"codeforces:{question_id.upper()}")
    elif p == "atcoder":
        keys.add(f"atcoder:{question_id.lower()}")
    elif p == "leetcode" and title:
        keys.add(f"leetcode:{slug(title)}")
    return keys
