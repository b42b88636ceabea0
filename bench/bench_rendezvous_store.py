"""The operator's torch-free c10d store (stoker.operator.c10d_store) against torch's own
TCPStore server, side by side in one run: the same torch clients, each server in a process
of its own, rounds interleaved.

- rendezvous: K agent processes (torch imported beforehand) start torchrun's c10d dynamic
  rendezvous together (min = max = K, a new run id each round); a round's time is from the
  start signal until the last agent has its rank.
- ops: one torch client's set, get (a wait then a get) and add round trips, per operation.

    .venv/bin/python bench/bench_rendezvous_store.py [--rounds 5] [--agents 2 8 16] [--ops 2000]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import print_table, write_results  # noqa: E402
from stoker.devcluster.procs import free_port  # noqa: E402
from stoker.operator.rendezvous import port_open  # noqa: E402

SERVERS = {
    # the operator's store process, shared mode, with torch made unimportable there
    "stoker": "import sys; sys.modules['torch'] = None; from stoker.operator.rendezvous import main; "
              "main(['--port', sys.argv[1]])",
    "torch": "import sys, time, datetime as dt; from torch.distributed import TCPStore; "
             "s = TCPStore('0.0.0.0', int(sys.argv[1]), is_master=True, multi_tenant=True, "
             "wait_for_workers=False, timeout=dt.timedelta(seconds=60)); time.sleep(10**6)",
}

AGENT = """
import json, sys, time
from torch.distributed.elastic.rendezvous import RendezvousParameters
from torch.distributed.elastic.rendezvous.registry import get_rendezvous_handler
k = int(sys.argv[1])
print("ready", flush=True)
for line in sys.stdin:
    if line.startswith("close"):        # once every agent has its rank: closing earlier fails the others
        h.shutdown()
        print("closed", flush=True)
        continue
    endpoint, run_id = line.split()
    t0 = time.monotonic()
    h = get_rendezvous_handler(RendezvousParameters(backend="c10d", endpoint=endpoint, run_id=run_id,
                                                    min_nodes=k, max_nodes=k, last_call_timeout=1))
    info = h.next_rendezvous()
    print(json.dumps({"s": time.monotonic() - t0, "rank": info.rank, "end": time.monotonic()}), flush=True)
"""

OPS = """
import datetime as dt, json, sys, time
from torch.distributed import TCPStore
s = TCPStore("127.0.0.1", int(sys.argv[1]), is_master=False, timeout=dt.timedelta(seconds=30))
n = int(sys.argv[2])
out = {}
for name, op in (("set", lambda i: s.set(f"k{i}", "v" * 64)), ("get", lambda i: s.get(f"k{i}")),
                 ("add", lambda i: s.add("counter", 1))):
    t0 = time.perf_counter()
    for i in range(n):
        op(i)
    out[name] = (time.perf_counter() - t0) / n * 1e6
print(json.dumps(out))
"""


def start_server(kind: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVERS[kind], str(port)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if port_open("127.0.0.1", port):
            return proc, port
        time.sleep(0.1)
    raise RuntimeError(f"the {kind} store did not listen")


def rendezvous_round(agents: list[subprocess.Popen], endpoint: str, run_id: str) -> float:
    t0 = time.monotonic()
    for a in agents:
        a.stdin.write(f"{endpoint} {run_id}\n")
        a.stdin.flush()
    results = [json.loads(a.stdout.readline()) for a in agents]
    took = max(r["end"] for r in results) - t0
    assert sorted(r["rank"] for r in results) == list(range(len(agents))), results
    for a in agents:
        a.stdin.write("close\n")
        a.stdin.flush()
    assert all(a.stdout.readline().strip() == "closed" for a in agents)
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--agents", type=int, nargs="+", default=[2, 8, 16])
    ap.add_argument("--ops", type=int, default=2000)
    args = ap.parse_args()
    servers = {kind: start_server(kind) for kind in SERVERS}
    raw: dict = {"rendezvous_s": {}, "op_us": {}}
    try:
        for k in args.agents:
            agents = [subprocess.Popen([sys.executable, "-c", AGENT, str(k)], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True) for _ in range(k)]
            assert all(a.stdout.readline().strip() == "ready" for a in agents)
            for r in range(args.rounds):
                for kind, (_, port) in servers.items():     # interleaved: the same load for both
                    s = rendezvous_round(agents, f"127.0.0.1:{port}", f"bench-{k}-{r}-{kind}")
                    raw["rendezvous_s"].setdefault(f"{kind}/{k}", []).append(round(s, 4))
            for a in agents:
                a.stdin.close()
                a.wait(30)
        for _ in range(args.rounds):
            for kind, (_, port) in servers.items():
                out = subprocess.run([sys.executable, "-c", OPS, str(port), str(args.ops)], capture_output=True,
                                     text=True, timeout=600, check=True)
                for op, us in json.loads(out.stdout.splitlines()[-1]).items():
                    raw["op_us"].setdefault(f"{kind}/{op}", []).append(round(us, 1))
    finally:
        for proc, _ in servers.values():
            proc.kill()
            proc.wait()
    rows = []
    for what, unit in (("rendezvous_s", "s"), ("op_us", "µs")):
        for key, samples in raw[what].items():
            kind, case = key.split("/")
            rows.append({"measure": f"{what.split('_')[0]} {case}", "server": kind, "unit": unit,
                         "median": statistics.median(samples), "min": min(samples), "max": max(samples)})
    rows.sort(key=lambda r: (r["measure"], r["server"]))
    print_table("c10d store: stoker (no torch) vs torch's TCPStore server", rows)
    write_results("bench_rendezvous_store", {"rounds": args.rounds, "agents": args.agents, "ops": args.ops,
                                             "rows": rows, "samples": raw})
    return 0


if __name__ == "__main__":
    sys.exit(main())
