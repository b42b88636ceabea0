"""SDK overhead: a small CPU training loop with and without ``session.step(...)``
while the session streams heartbeats to a local HeartbeatServer (every 50 ms,
100x the default rate, to make the background thread's cost visible).
Goal: < 1 % of the step time.

    .venv/bin/python bench/bench_sdk_overhead.py [--rounds 10] [--steps 200]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common import print_table, write_results  # noqa: E402
from stoker.common.heartbeat_server import HeartbeatServer  # noqa: E402
from stoker.worker.sdk import Session  # noqa: E402


def make_loop():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(64, 256)

    def run(steps: int, session: Session | None, start: int) -> float:
        t0 = time.perf_counter()
        for i in range(start, start + steps):
            ts = time.perf_counter()
            loss = model(x).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = loss.item()
            if session is not None:
                session.step(i, loss=value, tokens_per_second=64 / (time.perf_counter() - ts),
                             grad_norm=1.0, step_time_seconds=time.perf_counter() - ts)
        return (time.perf_counter() - t0) / steps

    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--interval", type=float, default=0.05, help="heartbeat interval (s)")
    args = ap.parse_args()

    server = HeartbeatServer(lambda ns, name: "bench-token" if (ns, name) == ("bench", "job") else None)
    port = server.start()
    # As under Stoker's launcher: the session also keeps its last step in a file (stoker.common.last_step).
    steps_dir = tempfile.mkdtemp(prefix="stoker-steps-")
    session = Session(f"127.0.0.1:{port}", "bench-token", namespace="bench", job_name="job",
                      interval_s=args.interval, last_step_dir=steps_dir).start()
    run = make_loop()
    run(50, None, 0)  # warm up
    run(50, session, 0)
    base, with_sdk = [], []
    step = 0
    for _ in range(args.rounds):  # interleaved, so drift and neighbours hit both alike
        base.append(run(args.steps, None, step))
        with_sdk.append(run(args.steps, session, step))
        step += args.steps
    per_call = min(timeit.repeat(lambda: session.step(1, loss=1.0, tokens_per_second=2.0, grad_norm=3.0,
                                                      step_time_seconds=0.1), number=20000, repeat=5)) / 20000
    build = min(timeit.repeat(lambda: session._build_message(1).SerializeToString(), number=2000,
                              repeat=5)) / 2000
    heartbeats = server.workers("bench", "job")[0].messages
    session.close()
    server.stop(grace=0)

    b, w = statistics.median(base), statistics.median(with_sdk)
    measured = (w - b) / b
    estimated = per_call / b
    rows = [
        {"loop": "without SDK (baseline)", "step_ms": b * 1e3, "vs_baseline": 1.0},
        {"loop": "with session.step + heartbeats", "step_ms": w * 1e3, "vs_baseline": w / b},
    ]
    print_table(f"SDK overhead: median of {args.rounds} interleaved rounds x {args.steps} steps, "
                f"heartbeat every {args.interval * 1e3:.0f} ms ({heartbeats} received)", rows)
    calls = [{"measure": "session.step() call", "value_us": per_call * 1e6,
              "fraction_of_step": estimated},
             {"measure": "heartbeat build+serialize (background)", "value_us": build * 1e6,
              "fraction_of_step": build / args.interval},
             {"measure": "loop slowdown (measured, noisy)", "value_us": (w - b) * 1e6,
              "fraction_of_step": measured}]
    print_table("Per-step cost (goal: fraction_of_step < 0.01; the heartbeat row is the share of one core)", calls)
    write_results("bench_sdk_overhead", {
        "config": vars(args), "loop": rows, "per_call_us": per_call * 1e6, "heartbeat_build_us": build * 1e6,
        "heartbeat_cpu_fraction_at_interval": build / args.interval,
        "overhead_fraction_measured": measured, "overhead_fraction_from_call_cost": estimated,
        "heartbeats_received": heartbeats, "goal_overhead_fraction": 0.01,
        "rounds_baseline_s": base, "rounds_with_sdk_s": with_sdk,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
