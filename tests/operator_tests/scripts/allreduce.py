"""Test trainer: gloo all-reduces over the world, recording what each worker saw.

Every worker process appends one JSON line per (re)start to $OUT_DIR/<pod>.jsonl
with its rank and world size. With --until-flag it keeps stepping (one
all-reduce per step) until the file $OUT_DIR/finish exists, then all ranks stop
at the same step (the stop decision is itself all-reduced) and exit 0.
"""
import argparse
import json
import os
import time

import torch
import torch.distributed as dist


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--until-flag", action="store_true")
    ap.add_argument("--step-seconds", type=float, default=0.2)
    args = ap.parse_args()
    out = os.environ["OUT_DIR"]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    t = torch.ones(1)
    dist.all_reduce(t)
    rec = {"pod": os.environ["STOKER_POD_NAME"], "rank": rank, "world": world, "sum": t.item(),
           "restart": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
           "master": os.environ.get("MASTER_ADDR"), "pod_ip": os.environ.get("STOKER_POD_IP"),
           "time": time.time()}
    with open(os.path.join(out, f"{os.environ['STOKER_POD_NAME']}.jsonl"), "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(f"rank {rank} world {world} sum {t.item()}", flush=True)
    if args.until_flag:
        step = 0
        while True:
            stop = torch.tensor([1.0 if rank == 0 and os.path.exists(os.path.join(out, "finish")) else 0.0])
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)
            if stop.item() > 0:
                break
            step += 1
            time.sleep(args.step_seconds)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
