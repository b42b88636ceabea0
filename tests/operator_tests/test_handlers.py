"""kopf's handlers only record and schedule: a job's pass runs on the controller's pass pool, so an
event handler returns while the pass is still reading the API server (kopf's per-object event queues,
each event a whole object, then never wait behind passes: bench/scale_memory.py)."""
from __future__ import annotations

import asyncio
import threading

import kopf

from stoker.operator import main
from stoker.operator.controller import Controller
from stoker.operator.pods import RenderConfig
from stoker.operator.watch_cache import WatchCache

from .helpers import NOW, job_body
from .test_controller import FakeKube


class BlockingKube(FakeKube):
    """Listing the pods waits until released: a pass that started is visibly under way."""

    def __init__(self, job):
        super().__init__(job)
        self.reading, self.release = threading.Event(), threading.Event()

    def list_pods_at(self, ns, name):
        self.reading.set()
        assert self.release.wait(10)
        return self.list_pods(ns, name), "1"


def test_a_job_event_and_a_resync_return_while_their_pass_runs_on_the_pool():
    kube = BlockingKube(job_body())
    ctl = Controller(kube, RenderConfig(), clock=lambda: NOW, cache=WatchCache(), resync_fresh_s=60)
    memo = kopf.Memo(controller=ctl)
    body = job_body()
    event = {"type": "ADDED", "object": body}
    asyncio.run(asyncio.wait_for(main.on_job_event(type="ADDED", name="demo", namespace="ns",
                                                   meta=body["metadata"], event=event, memo=memo), 1))
    assert kube.reading.wait(5)                 # the pass started on the pool and waits for its read
    asyncio.run(asyncio.wait_for(main.resync(name="demo", namespace="ns", memo=memo), 1))
    kube.release.set()
    for _ in range(500):
        if kube.calls.count("status") and not ctl._running and not ctl._pending:
            break
        threading.Event().wait(0.01)
    assert kube.calls.count("status") == 1 and kube.calls.count("create demo-worker-0-0") == 1
