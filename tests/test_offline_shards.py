"""Sharded offline jobs (``offline``): output in input order, resumable, lost shards redone, and
the lines of a shard equal to the single-process command's. Ray itself: tests/test_ray.py."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polyverse.errors import PolyverseError
from polyverse.offline.ordered import in_order
from polyverse.offline.shards import LocalExecutor, parts_dir, run_shards
from polyverse.offline.work import JobSpec, shard_lines


def line(rid: str, text: str) -> str:
    return json.dumps({"id": rid, "text": text}) + "\n"


def work(items):
    return [line(rid, p.upper()) for rid, p in items]


class Flaky:
    """An executor of several workers finishing in a scripted random order, whose workers die now and then."""

    def __init__(self, work, workers: int, seed: int, deaths: int) -> None:
        self.work, self.workers, self.rng, self.deaths = work, workers, random.Random(seed), deaths
        self.running: list[tuple[int, list]] = []
        self.submitted: list[int] = []

    def free(self) -> int:
        return self.workers - len(self.running)

    def submit(self, k, items) -> None:
        self.submitted.append(k)
        self.running.append((k, items))

    def next_done(self):
        k, items = self.running.pop(self.rng.randrange(len(self.running)))
        if self.deaths and self.rng.random() < 0.5:
            self.deaths -= 1
            return k, None
        return k, self.work(items)

    def close(self) -> None:
        self.running = []


def test_in_order_holds_results_back_until_their_predecessors_are_out():
    assert [i for i, _ in in_order([(2, "c"), (0, "a"), (1, "b")])] == [0, 1, 2]
    with pytest.raises(ValueError, match="without result 1"):
        list(in_order([(0, "a"), (2, "c")]))
    with pytest.raises(ValueError, match="twice"):
        list(in_order([(0, "a"), (0, "a")]))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), size=st.integers(1, 7), workers=st.integers(1, 4), seed=st.integers(0, 999),
       deaths=st.integers(0, 3), done_share=st.floats(0, 1))
def test_output_is_the_single_process_file_whatever_finishes_first(tmp_path_factory, n, size, workers, seed,
                                                                    deaths, done_share):
    items = [(f"q{i}", f"text {i}") for i in range(n)]
    expected = "".join(work(items))
    out = tmp_path_factory.mktemp("job") / "out.jsonl"
    done = {rid for rid, _ in items[: int(n * done_share)]}  # a run killed after these lines
    out.write_text("".join(work([it for it in items if it[0] in done])))
    counts = run_shards(items, out, done, size, Flaky(work, workers, seed, deaths))
    assert out.read_text() == expected
    assert counts["written"] + counts["skipped"] == n
    assert not parts_dir(out).exists()


def test_a_shard_whose_worker_dies_is_redone_and_nothing_is_lost(tmp_path):
    items = [(str(i), f"p{i}") for i in range(10)]
    ex = Flaky(work, 2, seed=1, deaths=2)
    counts = run_shards(items, tmp_path / "o.jsonl", set(), 3, ex)
    assert counts["redone"] == 2 and counts["shards"] == 4
    assert len(ex.submitted) == 6  # every shard once, the two lost ones again
    assert (tmp_path / "o.jsonl").read_text() == "".join(work(items))


def test_a_shard_that_keeps_killing_its_workers_stops_the_job_and_keeps_the_rest(tmp_path):
    items = [(str(i), f"p{i}") for i in range(6)]

    def deadly(part):
        return None if any(rid == "4" for rid, _ in part) else work(part)

    class Runner(LocalExecutor):
        def next_done(self):
            k, part = self.pending.pop(0)
            return k, deadly(part)

    out = tmp_path / "o.jsonl"
    with pytest.raises(PolyverseError, match="lost its worker 4 times"):
        run_shards(items, out, set(), 2, Runner(work), max_redo=3)
    assert out.read_text() == "".join(work(items[:4]))  # the shards before it were written


def test_finished_shards_waiting_on_disk_are_reused_by_a_rerun(tmp_path):
    items = [(str(i), f"p{i}") for i in range(8)]
    out = tmp_path / "o.jsonl"
    parts_dir(out).mkdir()
    (parts_dir(out) / "shard-00002.jsonl").write_text("".join(work(items[4:6])))  # finished, shard 1 was not
    (parts_dir(out) / "shard-00003.jsonl").write_text(line("6", "X"))  # torn: misses item 7, run again
    calls = []
    counts = run_shards(items, out, set(), 2, LocalExecutor(lambda part: calls.append(part) or work(part)))
    assert counts["reused"] == 1 and [p[0][0] for p in calls] == ["0", "2", "6"]
    assert out.read_text() == "".join(work(items))


def test_lines_of_other_items_are_refused(tmp_path):
    with pytest.raises(PolyverseError, match="other items"):
        run_shards([("a", "x")], tmp_path / "o.jsonl", set(), 1, LocalExecutor(lambda part: [line("b", "y")]))


def test_a_distill_shard_writes_the_single_process_lines(tiny, tmp_path):
    from polyverse.train.distill import DistillConfig, distill

    questions = [(str(i), q) for i, q in enumerate(["ab", "hello there", "x", "a much longer question here", "zz"])]
    cfg = DistillConfig(max_new_tokens=12, concurrency=3)
    distill(tiny, questions, tmp_path / "one.jsonl", cfg, chat=False)
    spec = JobSpec("distill", "unused", {}, {"method": "auto", "max_new_tokens": 12, "concurrency": 3, "chat": False})
    out = tmp_path / "sharded.jsonl"
    run_shards(questions, out, set(), 2, Flaky(lambda part: shard_lines(tiny, spec, part), 2, seed=5, deaths=1))
    assert out.read_bytes() == (tmp_path / "one.jsonl").read_bytes()


def test_generate_and_collect_shards_match_their_commands(tiny, tmp_path):
    from polyverse.cli import generate_file
    from polyverse.train.cllm.collect import FILE, CollectConfig, collect

    rows = [("a", "abc"), ("b", "hello"), ("c", "xyz xyz")]
    kwargs = dict(method="auto", max_new_tokens=10, chat=False)
    generate_file.run(tiny, rows, tmp_path / "gen.jsonl", 2, kwargs)
    lines = shard_lines(tiny, JobSpec("generate", "unused", {}, {**kwargs, "concurrency": 2}), rows)
    single = [json.loads(x) for x in (tmp_path / "gen.jsonl").read_text().splitlines()]
    sharded = [json.loads(x) for x in lines]
    for row in single + sharded:
        row.pop("stats")  # timings differ run to run
    assert sharded == single

    prompts = [(rid, tiny.encode(p, False)) for rid, p in rows]
    cfg = CollectConfig(block=4, max_new_tokens=8)
    collect(tiny, prompts, tmp_path / "c", cfg)
    lines = shard_lines(tiny, JobSpec("collect", "unused", {}, {"block": 4, "max_new_tokens": 8, "max_run": 8}), prompts)
    assert "".join(lines) == (tmp_path / "c" / FILE).read_text()


def test_job_kinds_are_checked():
    with pytest.raises(ValueError, match="unknown job kind"):
        JobSpec("train", "m")
