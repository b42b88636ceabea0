"""The locked rendezvous (issue 17): through the real gateway, the real per-job store process
and the launcher's forwarder, with torch's own TCPStore client (what torchrun's c10d
backend uses): a job reaches only its own store, and only with its own token; a pod of
another namespace, a wrong token, or a plain TCPStore client without the preamble reach
nothing."""
from __future__ import annotations

import datetime as dt

import pytest

from stoker.common import env as E
from stoker.common import rdzv_lock
from stoker.operator.rdzv_gateway import Gateway
from stoker.operator.rendezvous import StoreProcess

pytestmark = pytest.mark.torch

TOKENS = {("team-a", "llm"): "token-a", ("team-b", "llm"): "token-b", ("team-b", "vision"): "token-v"}


@pytest.fixture(scope="module")
def gateway():
    stores = StoreProcess(0, per_job=True)
    stores.start()
    gw = Gateway(0, lambda ns, job: TOKENS.get((ns, job)), stores, bind_host="127.0.0.1").start()
    yield gw
    gw.stop()
    stores.stop()


def client(port: int, timeout_s: float = 10.0):
    from torch.distributed import TCPStore

    return TCPStore("127.0.0.1", port, is_master=False, timeout=dt.timedelta(seconds=timeout_s))


def through(gw: Gateway, ns: str, job: str, token: str) -> rdzv_lock.Forwarder:
    return through_port(gw.port, ns, job, token)


def test_each_job_reaches_its_own_store_only(gateway):
    a = client(through(gateway, "team-a", "llm", "token-a").port)
    b = client(through(gateway, "team-b", "llm", "token-b").port)
    key = "torch.rendezvous.same-rdzv-id.state"   # even the same rendezvous id: another store
    a.set(key, "a's state")
    assert not b.check([key])
    b.set(key, "b's state")
    assert a.get(key) == b"a's state" and b.get(key) == b"b's state"
    b.delete_key(key)
    assert a.get(key) == b"a's state"
    # A second connection of the same job (another agent) sees that job's keys.
    assert client(through(gateway, "team-a", "llm", "token-a").port).get(key) == b"a's state"


@pytest.mark.parametrize("ns, job, token", [
    ("team-a", "llm", "token-b"),     # another job's token
    ("team-b", "llm", "token-a"),     # the same job name in another namespace, with a's token
    ("team-c", "llm", "token-a"),     # a job the operator does not know
])
def test_a_wrong_token_reaches_no_store(gateway, ns, job, token):
    before = gateway.refused
    with pytest.raises(Exception):   # torch raises DistNetworkError / RuntimeError on a closed connection
        client(through(gateway, ns, job, token).port, timeout_s=3).set("k", "v")
    assert gateway.refused > before


def test_a_plain_tcpstore_client_without_the_preamble_reaches_no_store(gateway):
    before = gateway.refused
    with pytest.raises(Exception):
        client(gateway.port, timeout_s=3).set("torch.rendezvous.x.state", "forged")
    assert gateway.refused > before


def test_the_launcher_points_torchrun_at_a_forwarder_only_when_the_operator_locked_it(gateway):
    args = ["--nnodes=2:2", f"--rdzv-endpoint=127.0.0.1:{gateway.port}", "train.py"]
    assert rdzv_lock.lock_args(args, {}) == (args, None)
    env = {E.RENDEZVOUS_LOCKED: "1", E.JOB_TOKEN: "token-a", E.JOB_NAMESPACE: "team-a", E.JOB_NAME: "llm"}
    out, fwd = rdzv_lock.lock_args(args, env)
    assert out == ["--nnodes=2:2", f"--rdzv-endpoint=127.0.0.1:{fwd.port}", "train.py"]
    client(fwd.port).set("k", "v")
    fwd.close()
    with pytest.raises(SystemExit, match=E.JOB_TOKEN):
        rdzv_lock.lock_args(args, {E.RENDEZVOUS_LOCKED: "1"})


def test_a_killed_store_process_comes_back_and_the_gateway_serves_again():
    import os
    import signal
    import time

    stores = StoreProcess(0, per_job=True)
    stores.start()
    stores.watch(interval_s=0.1)
    gw = Gateway(0, lambda ns, job: TOKENS.get((ns, job)), stores, bind_host="127.0.0.1").start()
    try:
        client(through(gw, "team-a", "llm", "token-a").port).set("k", "v")
        old = stores.proc.pid
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while (stores.proc.pid == old or stores.request("PING") != "PONG") and time.monotonic() < deadline:
            time.sleep(0.2)
        # A new, empty store: the jobs whose rendezvous it held restart (RendezvousLost), as before.
        c = client(through(gw, "team-a", "llm", "token-a").port)
        assert not c.check(["k"])
        c.set("k", "again")
    finally:
        gw.stop()
        stores.stop()


def test_a_derived_token_is_the_job_s_own_and_needs_the_key():
    from stoker.common.auth import derive_token, derived_lookup, key_id

    key = "k" * 40
    token = derive_token(key, "team-a", "llm")
    assert token == derived_lookup(key)("team-a", "llm")
    others = {derive_token(key, "team-b", "llm"), derive_token(key, "team-a", "llm2"),
              derive_token(key, "team-a/l", "lm"), derive_token("x" * 40, "team-a", "llm")}
    assert token not in others and len(others) == 4
    assert key_id(key) != key_id("x" * 40) and key[:8] not in key_id(key)
    with pytest.raises(ValueError, match="32"):
        derived_lookup("short")


def test_the_separate_store_closes_a_job_s_store_only_after_it_has_had_no_connection_for_a_while():
    """The HA install's store never hears of deleted jobs: an idle store is closed (a live
    torchrun agent keeps a connection open, so a running job's store is never idle)."""
    import time

    stores = StoreProcess(0, per_job=True)
    stores.start()
    gw = Gateway(0, lambda ns, job: TOKENS.get((ns, job)), stores, bind_host="127.0.0.1").start()
    try:
        agent = client(through(gw, "team-a", "llm", "token-a").port)   # held open, as torchrun's agent does
        agent.set("k", "v")
        gone = client(through(gw, "team-b", "llm", "token-b").port)
        gone.set("k", "b")
        del gone                                                       # the job's last agent exits
        deadline = time.monotonic() + 10
        while gw._open.get("team-b/llm") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gw.reap(idle_s=60) == []                                # not idle for long enough
        assert gw.reap(idle_s=60, now=time.monotonic() + 61) == ["team-b/llm"]
        assert not client(through(gw, "team-b", "llm", "token-b").port).check(["k"])   # a fresh store
        assert agent.get("k") == b"v"                                  # the live job's store untouched
    finally:
        gw.stop()
        stores.stop()


def test_the_separate_store_will_not_start_without_the_install_key():
    import subprocess
    import sys

    from stoker.operator.config import env_for

    env = {"PATH": "/usr/bin:/bin", env_for("rendezvous_key"): "short"}
    r = subprocess.run([sys.executable, "-m", "stoker.operator.rdzv_gateway", "--port", "0"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and env_for("rendezvous_key") in r.stderr and "at least 32" in r.stderr


def test_the_forwarder_waits_for_a_gateway_that_is_still_starting():
    """A job made right after an install: the store's pod may not listen yet. torch's client
    does not retry a connection the forwarder accepted, so the forwarder retries upstream."""
    import threading
    import time

    from stoker.devcluster.procs import free_port

    port = free_port()
    stores = StoreProcess(0, per_job=True)
    stores.start()
    started: list[Gateway] = []
    timer = threading.Timer(2.0, lambda: started.append(
        Gateway(port, lambda ns, job: TOKENS.get((ns, job)), stores, bind_host="127.0.0.1").start()))
    timer.start()
    try:
        t0 = time.monotonic()
        client(through_port(port, "team-a", "llm", "token-a").port, timeout_s=30).set("k", "v")
        assert time.monotonic() - t0 >= 1.5 and started
    finally:
        timer.join()
        for gw in started:
            gw.stop()
        stores.stop()


def through_port(port: int, ns: str, job: str, token: str) -> rdzv_lock.Forwarder:
    return rdzv_lock.Forwarder(("127.0.0.1", port), ns, job, token)
