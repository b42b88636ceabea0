"""`stoker logs` on a real job whose workers run as processes (process nodes):
through the pods/log API, which the node agent serves (kubelet /containerLogs)."""
from __future__ import annotations

import pathlib
import sys
import threading

import pytest

from .conftest import create_job, get_job, job_manifest, wait_for, worker_pods

pytestmark = [pytest.mark.cluster, pytest.mark.torch, pytest.mark.slow]

SCRIPT = str(pathlib.Path(__file__).with_name("scripts") / "chatty.py")


def test_logs_of_all_ranks_one_rank_tail_and_follow(stoker, kube, namespace, cli_process_pool, start_operator):
    op = start_operator(rendezvous=True)
    create_job(kube, namespace, job_manifest("chat", [sys.executable, SCRIPT], replicas=2,
                                              node_selector=cli_process_pool, env={"LINES": "20", "PAUSE": "0.25"}))
    wait_for("both workers printing", lambda: all(
        "line 0" in stoker("logs", "chat", "--replica", str(i)).out for i in (0, 1)), timeout=180,
        on_timeout=lambda: f"pods={[p['status'].get('phase') for p in worker_pods(kube, namespace, 'chat')]}\n"
                           f"{op.tail()}")
    # -f streams both ranks until the workers exit, then returns.
    result = {}
    t = threading.Thread(target=lambda: result.update(r=stoker("logs", "chat", "-f")), daemon=True)
    t.start()
    t.join(120)
    assert not t.is_alive(), "logs -f did not return after the workers exited"
    r = result["r"]
    assert r.rc == 0, r.err
    for i in (0, 1):
        mine = [line for line in r.out.splitlines() if line.startswith(f"[replica {i}] ")]
        assert f"[replica {i}] hello from chat-worker-{i}-0" in mine
        assert [line for line in mine if " line " in line] == \
            [f"[replica {i}] chat-worker-{i}-0 line {n}" for n in range(20)]
    wait_for("Succeeded", lambda: get_job(kube, namespace, "chat").get("status", {}).get("phase") == "Succeeded",
             timeout=60, on_timeout=op.tail)
    one = stoker("logs", "chat", "--replica", "1", "--tail", "1")
    assert one.rc == 0 and one.out == "chat-worker-1-0 line 19\n"   # one worker: no prefix
    assert stoker("logs", "chat", "--replica", "5").rc == 3
    assert stoker("logs", "chta").rc == 3
