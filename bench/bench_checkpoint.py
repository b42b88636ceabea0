"""Checkpoint storage benchmark against a real MinIO, 2 ranks (gloo, CPU).

Same sharded state (DTensor Shard(0) over 2 ranks, --mb MiB in total) through
each DCP storage candidate, versus the baseline measured in the same run: raw
boto3 managed (parallel multipart) upload/download of the same bytes, each rank
its own object, both ranks at once. Then async save: how long save() holds the
training loop versus a synchronous save.

    .venv/bin/python bench/bench_checkpoint.py [--mb 256] [--reps 2]

Uses $AWS_ENDPOINT_URL_S3 (+ credentials) if set, else starts a throwaway MinIO.
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from bench.common import free_port, minio_server, print_table, write_results  # noqa: E402

BACKENDS = ("s3torchconnector", "boto3", "crt", "fsspec")
MiB = 2**20


def make_state(mesh, total_mb: int, seed: int):
    from torch.distributed.tensor import DTensor, Shard

    world = mesh.size()
    cols, n = 1024, 8
    rows = max(1, total_mb * MiB // (4 * cols * n * world))
    gen = torch.Generator().manual_seed(seed)
    return {"model": {f"layers.{i}.weight": DTensor.from_local(torch.randn(rows, cols, generator=gen), mesh,
                                                                [Shard(0)]) for i in range(n)}}


def local_bytes(state) -> int:
    return sum(t.to_local().numel() * t.to_local().element_size() for t in state["model"].values())


def worker(rank: int, world: int, port: int, args, out: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    from stoker.worker.checkpoint import CheckpointManager
    from stoker.worker.checkpoint.s3 import TRANSFER, S3Store, make_client

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}")
    mesh = init_device_mesh("cpu", (world,))
    state = make_state(mesh, args.mb, seed=rank)
    target = make_state(mesh, args.mb, seed=100 + rank)
    total = local_bytes(state) * world

    def timed(fn) -> float:
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        dist.barrier()  # the slowest rank decides
        return time.perf_counter() - t0

    client = make_client()
    blob = b"".join(t.to_local().numpy().tobytes() for t in state["model"].values())
    key = f"raw/rank-{rank}"
    managers = {b: CheckpointManager("", keep=1, async_mode="disabled",
                                     store=S3Store(f"s3://{args.bucket}/{b}", backend=b)) for b in args.backends}
    times: dict[str, dict[str, list[float]]] = {m: {"save": [], "load": []} for m in ["raw-boto3", *managers]}
    # rep-major: every method once per round, so load from neighbours hits all alike
    for rep in range(args.reps):
        times["raw-boto3"]["save"].append(
            timed(lambda: client.upload_fileobj(io.BytesIO(blob), args.bucket, key, Config=TRANSFER)))
        times["raw-boto3"]["load"].append(
            timed(lambda: client.download_fileobj(args.bucket, key, io.BytesIO(), Config=TRANSFER)))
        for backend, mgr in managers.items():
            times[backend]["save"].append(timed(lambda: mgr.save(rep + 1, state)))
            assert mgr.last_result.ok, (backend, mgr.last_result)
            times[backend]["load"].append(timed(lambda: mgr.load(target)))
            for name, t in state["model"].items():
                assert torch.equal(t.to_local(), target["model"][name].to_local()), (backend, name)
                target["model"][name].to_local().zero_()
    del blob
    rows = {m: {"save_s": statistics.median(t["save"]), "load_s": statistics.median(t["load"]),
                "save_all_s": t["save"], "load_all_s": t["load"]} for m, t in times.items()}
    for mgr in managers.values():
        mgr.close()

    mgr = CheckpointManager("", keep=1, async_mode="async",
                            store=S3Store(f"s3://{args.bucket}/async", backend=args.backends[0]))
    blocked, finished = [], []
    for rep in range(args.reps):
        dist.barrier()
        t0 = time.perf_counter()
        mgr.save(rep + 1, state)
        blocked.append(time.perf_counter() - t0)
        mgr.wait()
        dist.barrier()
        finished.append(time.perf_counter() - t0)
        assert mgr.last_result.ok, mgr.last_result
    mgr.close()
    mine = {"rows": rows, "async_blocked_s": statistics.median(blocked),
            "async_total_s": statistics.median(finished)}
    gathered = [None] * world
    dist.all_gather_object(gathered, mine)
    if rank == 0:
        import json

        Path(out).write_text(json.dumps({"total_bytes": total, "ranks": gathered}))
    dist.destroy_process_group()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=256, help="total checkpoint size in MiB (all ranks)")
    ap.add_argument("--reps", type=int, default=5, help="interleaved rounds; medians are reported")
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    args = ap.parse_args()
    import json
    import tempfile

    with minio_server() as s3env:
        os.environ.update(s3env)
        from stoker.worker.checkpoint.s3 import make_client

        args.bucket = f"bench-ckpt-{os.getpid()}"
        make_client().create_bucket(Bucket=args.bucket)
        out = tempfile.mktemp(suffix=".json")
        mp.spawn(worker, args=(args.world, free_port(), args, out), nprocs=args.world, join=True)
        raw = json.loads(Path(out).read_text())
        os.unlink(out)

    total = raw["total_bytes"]
    rank0 = raw["ranks"][0]  # times are barrier-to-barrier, the same on every rank
    base = rank0["rows"]["raw-boto3"]
    table = []
    for name, r in rank0["rows"].items():
        table.append({
            "method": name, "save_s": r["save_s"], "save_MiB/s": total / MiB / r["save_s"],
            "save_vs_raw": base["save_s"] / r["save_s"], "load_s": r["load_s"],
            "load_MiB/s": total / MiB / r["load_s"], "load_vs_raw": base["load_s"] / r["load_s"],
        })
    ranked = sorted((row for row in table if row["method"] != "raw-boto3"), key=lambda r: r["save_s"] + r["load_s"])
    winner, runner_up = ranked[0], ranked[min(1, len(ranked) - 1)]
    print_table(f"Checkpoint save/load to MinIO: {total / MiB:.0f} MiB over {args.world} ranks "
                f"(median of {args.reps} interleaved rounds; *_vs_raw = raw boto3 time / method time, 1.0 = as fast as raw)", table)
    sync_s = rank0["rows"][args.backends[0]]["save_s"]
    blocked = max(r["async_blocked_s"] for r in raw["ranks"])
    async_rows = [
        {"mode": f"sync save ({args.backends[0]})", "loop_blocked_s": sync_s, "vs_sync": 1.0},
        {"mode": "async save: save() blocks", "loop_blocked_s": blocked, "vs_sync": blocked / sync_s},
        {"mode": "async save: until committed", "loop_blocked_s": rank0["async_total_s"],
         "vs_sync": rank0["async_total_s"] / sync_s},
    ]
    print_table("Async save: time the training loop is blocked (goal: < 0.10 of sync)", async_rows)
    speedup = (runner_up["save_s"] + runner_up["load_s"]) / (winner["save_s"] + winner["load_s"])
    print(f"winner: {winner['method']} (save+load {speedup:.2f}x faster than {runner_up['method']})")
    write_results("bench_checkpoint", {
        "config": {"total_mib": total / MiB, "world_size": args.world, "reps": args.reps},
        "storage": table, "async": async_rows,
        "winner": winner["method"], "winner_speedup_vs_runner_up": speedup,
        "async_blocked_fraction_of_sync": blocked / sync_s,
        "goal_async_blocked_fraction": 0.10,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
