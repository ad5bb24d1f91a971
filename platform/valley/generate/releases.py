"""LiveCodeBench release versions as named contest-date windows, so a study can say "release_v5" or "v6"
instead of writing dates, and a report can name the window it scored.

Source: LiveCodeBench's dataset card and lcb_runner README ("Dataset Versions"; github.com/LiveCodeBench/
LiveCodeBench, README.md at 28fef95): release_v1 .. release_v6 hold the problems released from May 2023 up to
Mar 2024, May 2024, Jul 2024, Sep 2024, Jan 2025 and Apr 2025; lcb_runner's `--release_version` also takes
single increments (`v2`) and ranges (`v1_v3`). lcb_runner selects a release by *file* (test.jsonl ..
test6.jsonl; `ProblemFilter.release_version` does the same) and filters dates apart (`--start_date`/
`--end_date`, inclusive). The day each window ends is the last contest_date of that release's file, measured
on the shared copies (../shared/data/lcb with the dates of ../shared/data/lcb_verdicts; 714 of 1055 problems):

    file         problems  first contest  last contest
    test.jsonl        281   2023-05-07     2024-03-02
    test2.jsonl        80   2024-03-09     2024-05-25
    test3.jsonl        63   2024-06-01     2024-08-10   (card: Jul 2024)
    test4.jsonl        65   2023-08-26*    2024-10-05   (card: Sep 2024; *one late-added 2023 problem,
                                                          the rest from 2024-08-04)
    test5.jsonl       109   2024-10-05     2025-01-04
    test6.jsonl       116   2025-01-04     2025-04-06

Dates only approximate the files: neighbouring releases share contest days (2024-08-04..2024-08-10,
2024-10-05, 2025-01-04), so a window holds a few problems of the next file on its last days, and an
increment (`v4`) misses its file's problems dated inside the previous window. Use `release_version` for
the exact files, a window for "problems released in this period".
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

FIRST_DAY = "2023-05-01"  # LCB's problems start in May 2023 (dataset card)
# last contest day of release_v1 .. release_v6 (measured, see above)
RELEASE_ENDS: tuple[str, ...] = ("2024-03-02", "2024-05-25", "2024-08-10", "2024-10-05", "2025-01-04", "2025-04-06")


@dataclass(frozen=True)
class Window:
    """Contest dates, both days inclusive (ISO YYYY-MM-DD), as ProblemFilter's start_date/end_date."""

    start: str
    end: str

    def __str__(self) -> str:
        return f"{self.start}..{self.end}"


def _day_after(day: str) -> str:
    return (dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat()


def increment(n: int) -> Window:
    """Release n's own problems (`vN`): from the day after release n-1 ends to the day release n ends."""
    _check_release(n)
    return Window(FIRST_DAY if n == 1 else _day_after(RELEASE_ENDS[n - 2]), RELEASE_ENDS[n - 1])


def _check_release(n: int) -> None:
    if not 1 <= n <= len(RELEASE_ENDS):
        raise ValueError(f"LCB has releases v1..v{len(RELEASE_ENDS)}; there is no v{n}")


def names() -> list[str]:
    """Every preset name with its own window (ranges vA_vB come on top)."""
    count = len(RELEASE_ENDS)
    return [f"release_v{n}" for n in range(1, count + 1)] + [f"v{n}" for n in range(1, count + 1)]


def resolve(name: str) -> Window:
    """`release_vN` (cumulative, from May 2023), `vN` (one increment) or `vA_vB` (increments A..B) as dates."""
    s = name.strip().lower()
    if m := re.fullmatch(r"release_v(\d+)", s):
        n = int(m.group(1))
        _check_release(n)
        return Window(FIRST_DAY, RELEASE_ENDS[n - 1])
    if m := re.fullmatch(r"v(\d+)", s):
        return increment(int(m.group(1)))
    if m := re.fullmatch(r"v(\d+)_v(\d+)", s):
        lo, hi = int(m.group(1)), int(m.group(2))
        if lo > hi:
            raise ValueError(f"LCB window {name!r} runs backwards; write v{hi}_v{lo}")
        return Window(increment(lo).start, increment(hi).end)
    raise ValueError(f"unknown LCB window {name!r}; use one of {', '.join(names())} or a range vA_vB")


def preset_of(start: str | None, end: str | None) -> str | None:
    """The preset whose window is exactly [start, end] (cumulative names first), else None; lets a window
    given as dates, or read back from a config dump, still be named."""
    if not start or not end:
        return None
    wanted = Window(start[:10], end[:10])
    return next((n for n in names() if resolve(n) == wanted), None)
