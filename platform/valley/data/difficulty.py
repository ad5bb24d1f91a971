"""Difficulty: keep the corpus's raw label, and derive one normalised bucket that subsets select on.

Each public corpus grades difficulty its own way: TACO with upper-case levels (EASY … VERY_HARD), LCB with
easy/medium/hard, APPS with introductory/interview/competition, Codeforces with a numeric rating, and
CodeContests with an enum number (1-5 for its own scale, 7+ for a Codeforces problem letter). The raw value
stays in `difficulty` so nothing is lost; `difficulty_bucket` is what RQ3's easy/hard split reads.
"""

from __future__ import annotations

TACO_LEVELS = ("easy", "medium", "medium_hard", "hard", "very_hard")  # LCB's three are a subset
APPS_LEVELS = ("introductory", "interview", "competition")
UNKNOWN = frozenset({"", "_", "unknown", "unknown_difficulty", "none", "null", "nan"})  # "-" arrives as "_"
CODE_CONTESTS_LEVELS = {1: "easy", 2: "medium", 3: "hard", 4: "harder", 5: "hardest"}
RATING_BANDS = (1200, 1600, 2000, 2400, 2800)  # Codeforces rating band edges


def rating_band(rating: int) -> str:
    """`cf_rating_<lo>_<hi>`: 400-point Codeforces bands, everything below 1200 and from 2800 pooled."""
    lo = 0
    for edge in RATING_BANDS:
        if rating < edge:
            return f"cf_rating_{lo}_{edge - 1}"
        lo = edge
    return f"cf_rating_{lo}_plus"


def _as_int(text: str) -> int | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if number == int(number) else None


def difficulty_bucket(raw: str | None, dataset: str | None = None) -> str | None:
    """The normalised bucket of a raw difficulty label, or None when it is unknown.

    `dataset` disambiguates small numbers: under CodeContests they are its enum, elsewhere a rating.
    """
    if raw is None:
        return None
    label = str(raw).strip().lower().replace(" ", "_").replace("-", "_")
    if label in UNKNOWN:
        return None
    if label in TACO_LEVELS or label in APPS_LEVELS:
        return label
    number = _as_int(label)
    if number is None:
        return label  # an unfamiliar scale: lower-cased as is, never silently dropped
    contests = dataset is not None and "code_contests" in dataset.lower().replace("-", "_")
    if contests or number < 100:
        if number in CODE_CONTESTS_LEVELS:
            return CODE_CONTESTS_LEVELS[number]
        if number >= 7:
            return f"cf_index_{chr(ord('A') + number - 7)}" if number - 7 < 26 else None
        return None  # 0 = UNKNOWN_DIFFICULTY, 6 = EXTERNAL
    return rating_band(number)
