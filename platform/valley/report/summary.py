"""The few numbers a user reads first, in the terminal, when a study ends: one line per evaluated run.

The report holds everything (results.parquet, report.md, plots); this is the headline from the same
results: data size, pass@1 with its bootstrap interval, completion rate and think-tag rate, in the
order of the valley (student, subset, data size, epoch).
"""

from __future__ import annotations

from typing import Any

import polars as pl

HEADLINE = ("pass@1", "completion_rate", "think_rate")


def summary_rows(results: pl.DataFrame) -> list[dict[str, Any]]:
    """One dict per run: run_id, model, subset, checkpoint, data_size, epoch and each headline metric as
    (value, ci_low, ci_high). Pure: the same results give the same rows."""
    picked = results.filter(pl.col("metric").is_in(HEADLINE))
    rows: dict[str, dict[str, Any]] = {}
    for r in picked.iter_rows(named=True):
        row = rows.setdefault(r["run_id"], {k: r[k] for k in ("run_id", "model", "subset", "checkpoint",
                                                               "data_size", "epoch")})
        row[r["metric"]] = (r["value"], r["ci_low"], r["ci_high"])

    def order(row: dict[str, Any]) -> tuple:
        return (row["model"] or "", row["checkpoint"] or "", row["subset"] or "", row["data_size"] or 0,
                row["epoch"] if row["epoch"] is not None else 1 << 30)

    return sorted(rows.values(), key=order)


def _pct(cell: tuple | None, *, ci: bool = False) -> str:
    if cell is None or cell[0] is None:
        return "-"
    text = f"{100 * cell[0]:.1f}%"
    if ci and cell[1] is not None and cell[2] is not None:
        text += f" [{100 * cell[1]:.1f}, {100 * cell[2]:.1f}]"
    return text


def summary_table(rows: list[dict[str, Any]]) -> Any:
    """A rich Table of `summary_rows`."""
    from rich.table import Table

    table = Table(title="valley: evaluated runs (pass@1 with 95% bootstrap interval)", title_justify="left")
    epochs = any(row["epoch"] is not None for row in rows)  # a column only for per-epoch evaluations
    columns = [("run", "left"), ("data", "right"), *([("epoch", "right")] if epochs else []), ("pass@1", "right"),
               ("completion", "right"), ("think tag", "right")]
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for row in rows:
        epoch = ["" if row["epoch"] is None else str(row["epoch"])] if epochs else []
        table.add_row(row["run_id"], str(row["data_size"] or 0), *epoch, _pct(row.get("pass@1"), ci=True),
                      _pct(row.get("completion_rate")), _pct(row.get("think_rate")))
    return table


def print_summary(results_path: str, files: dict[str, str | list[str]], console: Any = None) -> None:
    """Print the table of the results at `results_path`, then where the report and plots are."""
    from rich.console import Console

    console = console or Console(stderr=True)
    console.print(summary_table(summary_rows(pl.read_parquet(results_path))))
    for label, where in files.items():
        for path in [where] if isinstance(where, str) else where:
            console.print(f"  {label}: {path}", soft_wrap=True)
