"""The stream pool (`pool.mode: stream`): its scheduling loop against fake replicas (bounded in-flight
samples, least-loaded replica first, a lost replica's problems re-sent once each and never yielded twice),
the transformers micro-batcher, and the pool for real on Ray with a tiny random model: the in-process
samples, a replica killed mid-stream, parts on disk before the stage ends, time-closed parts."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter

import pytest

# the stage tests' problems and config: the stream pool is checked on the same runs
from fixtures import tiny_generate_config
from valley.generate.backends.base import Backend, Completion, Request, Sampling, sample_seed
from valley.generate.backends.microbatch import MicroBatcher
from valley.generate.config import GenerateConfig
from valley.generate.stream_pool import ReplicaLost, group_by_problem, stream


def _group(qid: str, n: int) -> list[Request]:
    return [Request(qid, i, f"prompt {qid}", sample_seed(0, qid, i)) for i in range(n)]


class FakeFleet:
    """Replicas that finish their oldest problem first; `lose` names (replica id, problem) calls that die."""

    def __init__(self, lose: set[tuple[int, str]] | None = None):
        self.ids = itertools.count()
        self.refs = itertools.count()
        self.lose = set(lose or ())
        self.live: dict[int, tuple[int, list[Request]]] = {}  # ref -> replica, group
        self.load: Counter = Counter()
        self.peak: Counter = Counter()
        self.started: list[int] = []
        self.stopped: list[int] = []
        self.submitted: list[tuple[int, str]] = []

    def start(self, slot: int) -> int:
        self.started.append(replica := next(self.ids))
        return replica

    def submit(self, replica: int, requests: list[Request]) -> int:
        ref = next(self.refs)
        self.live[ref] = (replica, requests)
        self.load[replica] += len(requests)
        self.peak[replica] = max(self.peak[replica], self.load[replica])
        self.submitted.append((replica, requests[0].question_id))
        return ref

    def wait(self, refs: list[int], timeout_s: float) -> list[int]:
        return [min(refs)]

    def result(self, ref: int) -> list[Completion]:
        replica, group = self.live.pop(ref)
        self.load[replica] -= len(group)
        if (replica, group[0].question_id) in self.lose:
            raise ReplicaLost(f"replica {replica} died")
        return [Completion(r.question_id, r.sample_idx, "x", 1, "stop") for r in group]

    def stop(self, replica: int) -> None:
        self.stopped.append(replica)


def test_stream_bounds_in_flight_and_yields_each_problem_once():
    groups = [_group(f"q{i}", 3) for i in range(10)]
    fleet = FakeFleet()
    out = list(stream(groups, fleet, replicas=2, max_in_flight=7, max_retries=1))
    assert sorted(c[0].question_id for c in out) == sorted(f"q{i}" for i in range(10))
    assert all(len(c) == 3 for c in out)
    assert max(fleet.peak.values()) <= 7  # two problems of 3 per replica, never a third
    assert {r for r, _ in fleet.submitted} == {0, 1}  # both replicas were used
    assert sorted(fleet.stopped) == [0, 1]


def test_a_problem_larger_than_the_bound_runs_alone():
    fleet = FakeFleet()
    out = list(stream([_group("big", 5), _group("small", 1)], fleet, replicas=1, max_in_flight=2, max_retries=0))
    assert [c[0].question_id for c in out] == ["big", "small"] and fleet.peak[0] == 5


def test_a_lost_replica_is_replaced_and_its_problems_resent_once():
    fleet = FakeFleet(lose={(0, "q0"), (0, "q2")})  # replica 0 dies holding q0 and q2
    groups = [_group(f"q{i}", 2) for i in range(6)]
    out = list(stream(groups, fleet, replicas=2, max_in_flight=4, max_retries=1))
    got = [c[0].question_id for c in out]
    assert sorted(got) == sorted(f"q{i}" for i in range(6)) and len(set(got)) == 6  # nothing lost, nothing twice
    assert fleet.started == [0, 1, 2]  # one fresh replica for the one loss (q2's failure is the same loss)
    assert 0 in fleet.stopped and sorted(fleet.stopped) == [0, 1, 2]
    assert [q for _, q in fleet.submitted].count("q0") == 2 and [q for _, q in fleet.submitted].count("q2") == 2


def test_a_problem_that_keeps_losing_replicas_fails_the_pool():
    fleet = FakeFleet(lose={(r, "q0") for r in range(10)})
    with pytest.raises(RuntimeError, match=r"problem 'q0' lost its replica 3 times \(pool.max_retries=2\)"):
        list(stream([_group("q0", 1), _group("q1", 1)], fleet, replicas=1, max_in_flight=4, max_retries=2))
    assert fleet.stopped  # replicas are shut down on the way out


def test_group_by_problem_keeps_order():
    reqs = [*_group("b", 2), *_group("a", 1)]
    assert [[r.sample_idx for r in g] for g in group_by_problem(reqs)] == [[0, 1], [0]]
    assert [g[0].question_id for g in group_by_problem(reqs)] == ["b", "a"]


class RecordingBackend(Backend):
    name = "recording"

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def generate(self, requests: list[Request], sampling: Sampling) -> list[Completion]:
        self.batches.append([f"{r.question_id}/{r.sample_idx}" for r in requests])
        if any(r.question_id == "bad" for r in requests):
            raise ValueError("boom")
        return [Completion(r.question_id, r.sample_idx, f"{r.seed}", sampling.max_tokens, "length") for r in requests]


def test_micro_batcher_gathers_queued_problems_into_batches():
    inner = RecordingBackend()
    batcher = MicroBatcher(inner, batch_size=4)
    sampling = Sampling(0.5, 1.0, 7)

    async def main() -> list[list[Completion]]:
        return list(await asyncio.gather(*(batcher.generate(_group(q, 3), sampling) for q in "abc")))

    out = asyncio.run(main())
    assert [[(c.question_id, c.sample_idx) for c in o] for o in out] == [[(q, i) for i in range(3)] for q in "abc"]
    assert [len(b) for b in inner.batches] == [4, 4, 1]  # batches cross problems, none above batch_size
    assert all(c.text == str(sample_seed(0, c.question_id, c.sample_idx)) for o in out for c in o)


def test_micro_batcher_hands_a_failed_batch_to_its_callers_and_goes_on():
    batcher = MicroBatcher(RecordingBackend(), batch_size=2)
    sampling = Sampling(0.5, 1.0, 7)

    async def main() -> tuple[object, list[Completion]]:
        bad, good = await asyncio.gather(batcher.generate(_group("bad", 2), sampling),
                                         batcher.generate(_group("good", 2), sampling), return_exceptions=True)
        return bad, good

    bad, good = asyncio.run(main())
    assert isinstance(bad, ValueError) and [c.question_id for c in good] == ["good", "good"]


# ---- on Ray, with the tiny model and real LCB problems ----

def _responses(storage, result) -> dict[tuple[str, int], str]:
    table = storage.read_parquet(result.stage_dir, "samples")
    keys = list(zip(table.column("question_id").to_pylist(), table.column("sample_idx").to_pylist(), strict=True))
    assert len(keys) == len(set(keys))  # no sample twice on disk
    return dict(zip(keys, table.column("response").to_pylist(), strict=True))


@pytest.fixture(scope="module")
def local_reference(tiny_model, lcb_file, tmp_path_factory):
    """The same samples generated in-process, one request per batch."""
    from valley.generate.stage import run_generate
    from valley.storage import Storage

    storage = Storage(str(tmp_path_factory.mktemp("ref")))
    cfg = tiny_generate_config(tiny_model, lcb_file, "ref", mode="local", batch_size=1)
    return _responses(storage, run_generate(cfg, storage))


def test_stream_is_the_default_mode():
    assert GenerateConfig(model="m", problems=["p.jsonl"]).pool.mode == "stream"
    pool = GenerateConfig(model="m", problems=["p.jsonl"], pool={"batch_size": 5}).pool
    assert (pool.in_flight("transformers"), pool.in_flight("vllm")) == (10, 256)


def test_stream_pool_survives_a_killed_replica_with_the_local_samples(ray_local, storage, tiny_model, lcb_file,
                                                                     local_reference, tmp_path):
    """A replica dies on its first problem mid-stream (two replicas, in-flight bound of 3 samples, so
    problems are queued behind it): Ray restarts it and re-runs its problems; every problem lands on disk
    once, with the in-process samples."""
    from valley.generate.stage import run_generate

    marker = tmp_path / "crashed"
    cfg = tiny_generate_config(tiny_model, lcb_file, "stream", replicas=2, max_in_flight=3, max_retries=2,
                               fault_crash_once_file=str(marker))
    assert cfg.pool.mode == "stream"
    result = run_generate(cfg, storage)
    assert marker.exists()  # a replica really died
    assert (result.n_problems, result.n_samples, result.n_generated) == (4, 8, 8)
    assert _responses(storage, result) == local_reference
    again = run_generate(cfg, storage)
    assert again.skipped and again.n_samples == 8


def test_stream_pool_yields_problems_and_parts_reach_disk_before_the_end(ray_local, storage, tiny_model, lcb_file,
                                                                       local_reference):
    """Problem by problem: with a zero flush interval each finished problem is a part on disk while the
    pool still has problems to deliver."""
    from valley.generate import selection
    from valley.generate.pool import run_pool
    from valley.generate.stage import build_requests, render_prompts
    from valley.generate.writer import SAMPLES_DIR, SampleWriter

    cfg = tiny_generate_config(tiny_model, lcb_file, "parts", replicas=1, max_in_flight=2)
    problems = selection.load_problems(cfg.problems, cfg.filters).problems
    prompts = render_prompts(cfg, problems)
    requests = build_requests(problems, prompts, cfg, set())
    writer = SampleWriter(storage, "gen", run_id="r", model=cfg.model, backend=cfg.backend, prompts=prompts,
                          expected=dict(Counter(r.question_id for r in requests)), part_size=1000, flush_s=0.0)
    seen: list[tuple[int, int]] = []  # (samples yielded so far, parts on disk) after each yield
    got: dict[tuple[str, int], str] = {}
    for done in run_pool(requests, cfg):
        assert len({c.question_id for c in done}) == 1 and len(done) == 2  # one whole problem per yield
        writer.add(done)
        got.update({(c.question_id, c.sample_idx): c.text for c in done})
        seen.append((len(got), len(storage.list("gen", SAMPLES_DIR, suffix=".parquet"))))
    writer.close()
    assert seen == [(2, 1), (4, 2), (6, 3), (8, 4)]  # a part per problem, each before the next arrived
    assert got == local_reference


def test_writer_closes_a_part_after_flush_s(storage):
    from valley.generate.writer import SAMPLES_DIR, SampleWriter

    now = [0.0]
    writer = SampleWriter(storage, "gen", run_id="r", model="m", backend="b", prompts={q: "p" for q in "abc"},
                          expected={q: 2 for q in "abc"}, part_size=100, flush_s=10.0, clock=lambda: now[0])

    def parts() -> int:
        return len(storage.list("gen", SAMPLES_DIR, suffix=".parquet"))

    def add(q: str, i: int) -> None:
        writer.add([Completion(q, i, "t", 1, "stop")])

    add("a", 0)
    add("a", 1)  # a finishes at t=0
    now[0] = 5.0
    add("b", 0)
    assert parts() == 0  # a has waited 5 s
    now[0] = 10.0
    add("b", 1)  # a has waited 10 s: a and b go to disk together
    assert parts() == 1 and writer.written == 4
    add("c", 0)
    now[0] = 30.0
    add("c", 1)  # c just finished: it waits, whatever the time since the last part
    assert parts() == 1
    writer.close()
    assert parts() == 2 and writer.written == 6
    with pytest.raises(RuntimeError, match="more samples of 'a'"):
        add("a", 0)
