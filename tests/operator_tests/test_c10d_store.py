"""The torch-free c10d store (stoker.operator.c10d_store) against torch's own TCPStore: the
same script of commands, through torch's client, gives the same answers from both servers;
waits, cancelled waits and queues behave alike; a client that breaks the protocol loses
only its own connection; the store process runs where torch cannot be imported; and two
real torchrun agents rendezvous through it and train.

The server always runs in its own process (as in the operator): torch's client holds the
GIL while it waits for some answers, so a server in the test's own process would stall."""
from __future__ import annotations

import datetime as dt
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from stoker.operator.rendezvous import StoreProcess

pytestmark = pytest.mark.torch

NO_TORCH = "import sys; sys.modules['torch'] = None; from stoker.operator.rendezvous import main; main()"


@pytest.fixture(scope="module")
def stores():
    stores = StoreProcess(0, per_job=True)
    stores.start()
    yield stores
    stores.stop()


@pytest.fixture()
def ours(stores, request):
    """(host, port) of a fresh store of the per-job store process, as the gateway reaches it."""
    return "127.0.0.1", stores.open(f"tests/{request.node.name}")


@pytest.fixture()
def torch_server():
    from torch.distributed import TCPStore

    server = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=dt.timedelta(seconds=5))
    yield "127.0.0.1", server.port
    del server


def client(addr, timeout_s: float = 5.0):
    from torch.distributed import TCPStore

    return TCPStore(addr[0], addr[1], is_master=False, timeout=dt.timedelta(seconds=timeout_s))


def script(store, tag: str) -> list:
    """Every command the client has, with the edge cases torch's server defines."""
    k = lambda name: f"{tag}/{name}"    # noqa: E731 -- one store per module: keys of their own
    out: list = []
    store.set(k("a"), "1")
    out += [store.get(k("a")), store.add(k("n"), 5), store.add(k("n"), -7), store.get(k("n"))]
    out += [store.compare_set(k("a"), "1", "2"), store.compare_set(k("a"), "x", "3"),
            store.compare_set(k("new"), "", "made"), store.compare_set(k("absent"), "hoped", "y")]
    out += [store.check([k("a"), k("new")]), store.check([k("a"), k("absent")]), store.check([])]
    store.multi_set([k("m1"), k("m2")], ["v1", b"\x00\xff"])
    out += [store.multi_get([k("m1"), k("m2"), k("a")])]
    store.append(k("m1"), "+more")
    store.append(k("fresh"), "first")
    out += [store.get(k("m1")), store.get(k("fresh"))]
    out += [store.delete_key(k("m1")), store.delete_key(k("m1")), store.check([k("m1")])]
    store.set(k("big"), b"x" * 1_000_000)
    out += [len(store.get(k("big")))]
    store.queue_push(k("q"), "first")
    store.queue_push(k("q"), "second")
    out += [store.queue_len(k("q")), store.queue_pop(k("q")), store.queue_len(k("q")), store.check([k("q")])]
    out += [store.queue_pop(k("q")), store.queue_len(k("q")), store.queue_len(k("never"))]
    with pytest.raises(Exception, match="empty"):
        store.queue_pop(k("q"), block=False)
    with pytest.raises(Exception, match="timeout"):
        store.wait([k("a"), k("not-yet")], dt.timedelta(seconds=0.3))
    store.set(k("after-timeout"), "ok")         # the connection still works after a cancelled wait
    out += [store.get(k("after-timeout"))]
    return out


def test_the_same_commands_give_the_same_answers_as_torchs_server(ours, torch_server):
    theirs = script(client(torch_server), "diff")
    mine = script(client(ours), "diff")
    assert mine == theirs
    assert theirs[:4] == [b"1", 5, -2, b"-2"]       # the script does what it says
    assert client(ours).num_keys() == client(torch_server).num_keys()


def test_a_wait_ends_when_another_client_sets_the_keys(ours):
    waiter, setter = client(ours, timeout_s=20), client(ours)

    def later():
        time.sleep(0.3)
        setter.set("w/one", "1")
        time.sleep(0.3)
        setter.add("w/two", 1)

    threading.Thread(target=later, daemon=True).start()
    t0 = time.monotonic()
    waiter.wait(["w/one", "w/two"])
    assert 0.5 < time.monotonic() - t0 < 10
    # get() waits for its key first (WAIT then GET), as rendezvous reads do.
    threading.Thread(target=lambda: (time.sleep(0.3), setter.set("w/three", "3")), daemon=True).start()
    assert waiter.get("w/three") == b"3"


def test_a_blocked_queue_pop_is_woken_by_a_push(ours):
    popper, pusher = client(ours, timeout_s=20), client(ours)
    threading.Thread(target=lambda: (time.sleep(0.3), pusher.queue_push("bq", "item")), daemon=True).start()
    assert popper.queue_pop("bq") == b"item"


def raw(addr, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection; what comes back before the server closes it or
    goes quiet for a second."""
    with socket.create_connection(addr, timeout=1) as s:
        s.sendall(data)
        got = b""
        try:
            while chunk := s.recv(4096):
                got += chunk
        except TimeoutError:
            pass
        return got


VALIDATE = b"\x00" + struct.pack("<I", 0x3C85F7CE)
PING = b"\x0d" + struct.pack("<I", 4242)


@pytest.mark.parametrize("data", ids=["get-first", "bad-magic", "huge-key", "huge-value", "huge-check", "unknown"],
                         argvalues=[
    b"\x03" + struct.pack("<Q", 1) + b"k",                   # a GET before VALIDATE
    b"\x00" + struct.pack("<I", 1234) + PING,                # a wrong magic number
    VALIDATE + b"\x01" + struct.pack("<Q", 10**9),           # a key of a GB
    VALIDATE + b"\x01" + struct.pack("<Q", 1) + b"k" + struct.pack("<Q", 2**40),   # a TB value
    VALIDATE + b"\x05" + struct.pack("<Q", 10**8),           # CHECK of 10^8 keys
    VALIDATE + b"\xfe",                                      # no such command
])
def test_a_client_that_breaks_the_protocol_loses_only_its_connection(ours, data):
    assert raw(ours, data + PING) == b""
    assert raw(ours, VALIDATE + PING) == struct.pack("<I", 4242)
    healthy = client(ours)
    healthy.set("still", "served")
    assert healthy.get("still") == b"served"


def test_the_store_process_needs_no_torch(tmp_path):
    """The per-job store process with ``import torch`` made impossible: it opens a store,
    and torch's client (here, in the test) uses it."""
    proc = subprocess.Popen([sys.executable, "-c", NO_TORCH, "--per-job"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        proc.stdin.write("OPEN ns/job\n")
        proc.stdin.flush()
        verb, port = proc.stdout.readline().split()
        assert verb == "PORT"
        store = client(("127.0.0.1", int(port)))
        store.set("k", "v")
        assert store.get("k") == b"v"
    finally:
        proc.stdin.close()
        proc.wait(10)


TRAIN = """
import torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
print(f"rank {dist.get_rank()} of {dist.get_world_size()}: sum {t.item():.0f}", flush=True)
dist.destroy_process_group()
"""


def test_two_torchrun_agents_rendezvous_through_it(tmp_path):
    """The shared store mode, with torch unimportable in the store's process: two torchrun
    agents (c10d rendezvous backend) meet there and their trainers all-reduce."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = subprocess.Popen([sys.executable, "-c", NO_TORCH, "--port", str(port)])
    script_path = tmp_path / "train.py"
    script_path.write_text(TRAIN)
    try:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "c10d-store-test",
               "--max-restarts", "0", str(script_path)]
        agents = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
                  for _ in range(2)]
        outs = [a.communicate(timeout=120)[0] for a in agents]
        assert [a.returncode for a in agents] == [0, 0], outs
        lines = sorted(line for out in outs for line in out.splitlines() if line.startswith("rank "))
        assert lines == ["rank 0 of 2: sum 3", "rank 1 of 2: sum 3"], outs
    finally:
        store.terminate()
        store.wait(10)
