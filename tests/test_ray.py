"""Offline jobs on a local Ray cluster (``integrations.ray``): `make test-ray` runs these (Ray starts
processes of its own, so they stay out of the main suite: ``-m ray``)."""

from __future__ import annotations

import os
import signal

import pytest

from polyverse.integrations.ray import available

pytestmark = [pytest.mark.ray,
              pytest.mark.skipif(not available(), reason="Ray is not installed: pip install 'polyverse[ray]'")]


def test_distill_on_two_ray_workers_equals_one_process_even_when_a_worker_dies(tiny_dir, tmp_path):
    import polyverse
    from polyverse.integrations.ray import RayExecutor
    from polyverse.offline.shards import run_shards
    from polyverse.offline.work import JobSpec
    from polyverse.train.distill import DistillConfig, distill

    questions = [(str(i), f"question number {i} " * (1 + i % 3)) for i in range(24)]
    lm = polyverse.load(str(tiny_dir), progress=False)
    distill(lm, questions, tmp_path / "one.jsonl", DistillConfig(max_new_tokens=24, concurrency=4), chat=False)

    spec = JobSpec("distill", str(tiny_dir), {}, {"method": "auto", "max_new_tokens": 24, "concurrency": 4, "chat": False})
    killed = []

    class KillingOne(RayExecutor):
        """Kills the worker that takes shard 2, as soon as it has it: mid-run, its shard in flight."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.pids = {a._actor_id.hex(): self.ray.get(a.pid.remote()) for a in self.idle}

        def submit(self, k, items):
            actor = self.idle[0]
            super().submit(k, items)
            if k == 2 and not killed:
                killed.append(self.pids[actor._actor_id.hex()])
                os.kill(killed[0], signal.SIGKILL)

    ex = KillingOne("local", spec, workers=2, threads=1)
    counts = run_shards(questions, tmp_path / "ray.jsonl", set(), 2, ex)
    assert killed and counts["written"] == 24 and counts["redone"] >= 1
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
