"""The operator's rendezvous store is a child process; when it dies on its own (killed,
OOM) the operator starts it again on the same port, or no job could rendezvous again
until the operator itself restarts (found by bench/chaos.py, fault kind
rendezvous_killed)."""
from __future__ import annotations

import os
import signal
import time

import pytest

from stoker.operator.rendezvous import StoreProcess, port_open

from .conftest import free_port

pytestmark = [pytest.mark.torch]


def test_a_killed_store_is_started_again_on_the_same_port():
    store = StoreProcess(free_port(), bind_host="127.0.0.1")
    store.start()
    store.watch(interval_s=0.1)
    try:
        first = store.proc.pid
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (store.proc.pid != first and port_open("127.0.0.1", store.port)):
            time.sleep(0.1)
        assert store.proc.pid != first and store.restarts == 1
        assert port_open("127.0.0.1", store.port)
    finally:
        store.stop()
    time.sleep(0.3)
    assert store.proc.poll() is not None and store.restarts == 1  # stop() is final: no restart after it
