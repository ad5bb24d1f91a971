"""LCB evaluation windows and calibration: release presets as contest-date windows (checked against the shared
LCB files), a student's training cutoff as its default window, the window named in the report, and the
timeout rate and grade re-runs per run."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest
from pydantic import ValidationError

from valley.generate import releases
from valley.generate.config import GenerateConfig, ProblemFilter
from valley.generate.selection import load_problems, select
from valley.metrics.compute import compute_run_metrics

# ---- presets ----------------------------------------------------------------------------------------------


def test_presets_resolve_to_their_dates():
    assert releases.resolve("release_v1") == releases.Window("2023-05-01", "2024-03-02")
    assert releases.resolve("release_v5") == releases.Window("2023-05-01", "2025-01-04")
    assert releases.resolve("release_v6") == releases.Window("2023-05-01", "2025-04-06")
    assert releases.resolve("v1") == releases.resolve("release_v1")
    assert releases.resolve("v2") == releases.Window("2024-03-03", "2024-05-25")  # the day after v1 ends
    assert releases.resolve("V6") == releases.Window("2025-01-05", "2025-04-06")
    assert releases.resolve("v2_v4") == releases.Window("2024-03-03", "2024-10-05")
    # consecutive increments tile the whole range, without gaps or overlaps
    for n in range(2, 7):
        assert releases.resolve(f"v1_v{n}") == releases.resolve(f"release_v{n}")
    for bad, says in (("release_v7", "no v7"), ("v0", "no v0"), ("v5_v2", "backwards"), ("latest", "unknown")):
        with pytest.raises(ValueError, match=says):
            releases.resolve(bad)
    assert releases.preset_of("2023-05-01", "2025-01-04") == "release_v5"
    assert releases.preset_of("2024-03-03T00:00:00", "2024-05-25") == "v2"
    assert releases.preset_of("2024-08-01", None) is None and releases.preset_of("2024-08-01", "2024-09-01") is None


def test_a_preset_fills_the_filter_dates_and_only_they_are_hashed():
    flt = ProblemFilter(window="release_v5")
    assert (flt.start_date, flt.end_date) == ("2023-05-01", "2025-01-04")
    assert "window" not in flt.model_dump()
    named = GenerateConfig(model="m", problems=["p"], filters={"window": "release_v5"})
    dated = GenerateConfig(model="m", problems=["p"], filters={"start_date": "2023-05-01", "end_date": "2025-01-04"})
    plain = GenerateConfig(model="m", problems=["p"])
    assert named.config_hash() == dated.config_hash() != plain.config_hash()
    assert "window" not in plain.model_dump()["filters"]  # an unset preset leaves every old hash as it was
    assert named.filters.window_label() == dated.filters.window_label() == "release_v5 (2023-05-01..2025-01-04)"
    assert ProblemFilter(start_date="2024-08-01").window_label() == "2024-08-01.."
    assert ProblemFilter(release_version="release_v6").window_label() == "files of release_v6, all contest dates"


def test_a_preset_beside_other_dates_is_refused():
    with pytest.raises(ValidationError, match="window 'v5' is 2024-10-06..2025-01-04 but start_date is 2024-10-01"):
        ProblemFilter(window="v5", start_date="2024-10-01")
    with pytest.raises(ValidationError, match="end_date"):
        ProblemFilter(window="release_v5", end_date="2025-04-06")
    with pytest.raises(ValidationError, match="no v9"):
        ProblemFilter(window="release_v9")
    with pytest.raises(ValidationError, match="not an ISO date"):
        ProblemFilter(start_date="Aug 2024")
    with pytest.raises(ValidationError, match="after end_date"):
        ProblemFilter(start_date="2025-01-01", end_date="2024-12-31")
    # dates equal to the preset's are the same window (a dumped config reloads with both)
    same = ProblemFilter(window="v5", start_date="2024-10-06", end_date="2025-01-04T00:00:00")
    assert (same.start_date, same.end_date) == ("2024-10-06", "2025-01-04")


def _problem(qid: str, date: str | None) -> tuple[dict, int | None]:
    return {"question_id": qid, "question_content": "x", "contest_date": date, "tests": "[]"}, None


def test_a_window_selects_by_contest_date_and_the_selection_records_it():
    rows = [_problem("a", "2024-10-05T19:30:00"), _problem("b", "2024-10-06T00:00:00"),
            _problem("c", "2025-01-04T18:30:00"), _problem("d", "2025-01-05"), _problem("e", None)]
    sel = select(rows, ProblemFilter(window="v5"))
    assert [p["question_id"] for p in sel.problems] == ["b", "c"]  # whole days, both ends inclusive
    assert sel.dropped == {"contest_date": 2, "missing_contest_date": 1}
    assert sel.summary()["window"] == {"label": "v5 (2024-10-06..2025-01-04)", "start_date": "2024-10-06",
                                       "end_date": "2025-01-04", "first_contest_date": "2024-10-06",
                                       "last_contest_date": "2025-01-04", "n_dated": 2}
    everything = select(rows, ProblemFilter())
    assert everything.window["label"] == "all contest dates" and everything.window["n_dated"] == 4


# ---- the presets against the shared LCB files -------------------------------------------------------------

LCB_FILES = [f"refined_test{'' if n == 1 else n}.jsonl" for n in range(1, 7)]
# the shared problems carry no dates; this verdict file has them for all 714 (the gu-ni files' are placeholders)
DATES_FROM = "xiangww0108__Qwen2.5-Ins-7B__Scenario.codegeneration_1_0.2_eval_all.json.gz"
LATE_ADDED = {"3026"}  # a 2023-08-26 LeetCode problem that LCB added only in release_v4


@pytest.fixture(scope="module")
def lcb_releases(shared_data) -> tuple[list[str], list[str]]:
    files = [str(shared_data / "lcb" / name) for name in LCB_FILES]
    return files, [str(shared_data / "lcb_verdicts" / DATES_FROM)]


def test_presets_agree_with_the_shared_lcb_files(lcb_releases):
    files, meta = lcb_releases
    for n in range(1, 7):
        own = load_problems([files[n - 1]], ProblemFilter(), meta).problems
        days = sorted(p["contest_date"][:10] for p in own)
        assert len(days) == len(own), "every shared problem gets its date from the verdict file"
        assert days[-1] == releases.RELEASE_ENDS[n - 1]  # a window ends on its release's last contest day
        assert days[0] >= releases.FIRST_DAY
        # release_vN by date holds every problem of release_vN by file ...
        by_date = load_problems(files, ProblemFilter(window=f"release_v{n}"), meta)
        by_file = load_problems(files, ProblemFilter(release_version=f"release_v{n}"), meta)
        ids = {p["question_id"] for p in by_date.problems}
        assert {p["question_id"] for p in by_file.problems} <= ids
        # ... and of later files only the late-added problem and contests of its own last week
        end = releases.resolve(f"release_v{n}").end
        extra = [p for p in by_date.problems if p["question_id"] not in {q["question_id"] for q in by_file.problems}]
        assert len(extra) <= 7
        assert all(p["question_id"] in LATE_ADDED or p["contest_date"][:10] > _week_before(end) for p in extra), extra
    assert len(load_problems(files, ProblemFilter(window="release_v6"), meta).problems) == 714
    # an increment by date matches its file but for contests shared with the neighbouring releases
    v4 = load_problems(files, ProblemFilter(window="v4"), meta).problems
    file4 = {p["question_id"] for p in load_problems([files[3]], ProblemFilter(), meta).problems}
    assert len(file4 & {p["question_id"] for p in v4}) == 58 and len(file4) == 65


def _week_before(day: str) -> str:
    return (dt.date.fromisoformat(day) - dt.timedelta(days=7)).isoformat()


# ---- a student's cutoff --------------------------------------------------------------------------------------


def _spec(students: list[dict], generate: dict | None = None):
    from valley.experiment.spec import ExperimentSpec

    return ExperimentSpec.model_validate({
        "experiment": "x", "students": students, "data": {"inputs": ["/t.jsonl"]}, "label": None,
        "generate": {"problems": ["/p.jsonl"], **(generate or {})}})


def test_a_cutoff_starts_the_students_window_the_day_after():
    spec = _spec([{"name": "old", "model": "/m", "cutoff": "2024-07-31"}, {"name": "plain", "model": "/m"},
                  {"name": "own", "model": "/m", "cutoff": "2024-07-31", "generate": {"filters": {"window": "v6"}}}],
                 {"filters": {"difficulties": ["hard"]}})
    old = spec.arm_generate_config(None, "old").filters
    assert (old.start_date, old.end_date, old.difficulties) == ("2024-08-01", None, ["hard"])
    assert spec.arm_generate_config(None, "plain").filters.start_date is None
    own = spec.arm_generate_config(None, "own").filters  # the student's own window wins over its cutoff
    assert (own.start_date, own.end_date) == ("2025-01-05", "2025-04-06")
    # a student without a cutoff derives the config it did before cutoffs existed
    assert spec.arm_generate_config(None, "plain").config_hash() == _spec(
        [{"name": "plain", "model": "/m"}], {"filters": {"difficulties": ["hard"]}}).arm_generate_config(
        None, "plain").config_hash()


def test_an_explicit_window_in_the_generate_section_wins_over_a_cutoff():
    for window in ({"window": "release_v5"}, {"end_date": "2025-01-04"}, {"start_date": "2024-01-01"}):
        spec = _spec([{"name": "s", "model": "/m", "cutoff": "2024-07-31"}], {"filters": window})
        flt = spec.arm_generate_config(None, "s").filters
        assert flt.start_date != "2024-08-01", window
    with pytest.raises(ValidationError, match="cutoff"):
        _spec([{"name": "s", "model": "/m", "cutoff": "July 2024"}])


# ---- timeout rate and re-runs --------------------------------------------------------------------------------


def _tables(rerun: bool = True) -> tuple[pa.Table, pa.Table, pa.Table]:
    keys = [("q0", 0), ("q0", 1), ("q1", 0), ("q1", 1)]
    samples = pa.Table.from_pylist([{"question_id": q, "sample_idx": i, "response": "```python\npass\n```",
                                     "finish_reason": "stop"} for q, i in keys])
    verdicts = [{"question_id": q, "sample_idx": i, "verdict": v}
                for (q, i), v in zip(keys, ["pass", "time_limit", "time_limit", "wrong_answer"], strict=True)]
    if rerun:  # q0/1 still timed out alone; q0/0 passed once it had the machine to itself
        for row, alone in zip(verdicts, [True, True, False, False], strict=True):
            row["rerun_alone"] = alone
    problems = pa.table({"question_id": ["q0", "q1"], "contest_date": ["2024-10-06T00:00:00", "2025-01-04"]})
    return samples, pa.Table.from_pylist(verdicts), problems


def test_timeout_rate_and_reruns_alone_rows():
    rows = {r["metric"]: r for r in compute_run_metrics(*_tables(), max_tokens=100, n_boot=50)}
    timeout = rows["timeout_rate"]
    assert timeout["value"] == pytest.approx(0.5) == rows["verdict_share/time_limit"]["value"]
    assert timeout["ci_low"] <= timeout["value"] <= timeout["ci_high"]
    assert rows["n_reruns_alone"]["value"] == 2 and rows["n_reruns_alone/verdict=time_limit"]["value"] == 1
    assert (rows["contest_date_first"]["value"], rows["contest_date_last"]["value"]) == (20241006, 20250104)
    without = {r["metric"] for r in compute_run_metrics(*_tables(rerun=False), max_tokens=100, n_boot=50)}
    assert "timeout_rate" in without and "n_reruns_alone" not in without  # imports say nothing about re-runs


# ---- the report names the window ------------------------------------------------------------------------------


def test_the_report_names_the_window_and_shows_calibration(tmp_path):
    from valley.report.config import ReportConfig
    from valley.report.stage import run_report
    from valley.storage import Storage

    storage = Storage(str(tmp_path / "store"))
    samples, verdicts, problems = _tables()
    storage.write_parquet(samples, "generate", "g", "samples", "part-0.parquet")
    storage.write_parquet(problems, "generate", "g", "problems.parquet")
    storage.write_parquet(verdicts, "grade", "v.parquet")
    rows = [({**p, "question_content": "x", "tests": "[]"}, None) for p in problems.to_pylist()]
    selection = select(rows, ProblemFilter(window="v5")).summary()
    storage.mark_success("generate/g", "h", {"max_tokens": 100, "selection": selection})
    cfg = ReportConfig(experiment="w", n_boot=20, parallel=False, runs=[
        {"run_id": "s-base", "data_size": 0, "model": "s", "samples": "generate/g/samples",
         "verdicts": "grade/v.parquet", "problems": "generate/g/problems.parquet"}])
    result = run_report(cfg, storage)
    md = storage.read_text(result.report_md)
    assert "**LCB window:** v5 (2024-10-06..2025-01-04); 2 problems, contest dates 2024-10-06..2025-01-04." in md
    assert "| Run | LCB window | Contest dates | Problems | Timeout rate | Re-run alone | of which time limit |" in md
    assert "| s-base | v5 (2024-10-06..2025-01-04) | 2024-10-06..2025-01-04 | 2 | 50.0" in md
    assert md.split("| s-base | v5 (2024-10-06..2025-01-04)", 1)[1].splitlines()[0].endswith("| 2 | 1 |")
    results = storage.read_parquet(result.results).to_pylist()
    got = {r["metric"]: r["value"] for r in results}
    assert got["n_problems/lcb_window=v5 (2024-10-06..2025-01-04)"] == 2
    assert (got["lcb_window_start"], got["lcb_window_end"]) == (20241006, 20250104)
