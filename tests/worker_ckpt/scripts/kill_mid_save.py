"""torchrun worker: commit step 1, then start step 2 with a stalled writer and
signal the test, which SIGKILLs the whole job.

    torchrun --nproc-per-node 2 kill_mid_save.py URI SIGNAL_DIR WHERE
WHERE: "shards" (stall after a shard file is written, before .metadata) or
"commit" (stall after .metadata, before stoker.json / COMMITTED).
"""
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint.filesystem as dcp_fs

from stoker.common import layout
from stoker.worker.checkpoint import CheckpointManager
from stoker.worker.sdk import exit_process
from stoker.worker.checkpoint.store import LocalStore

uri, signal_dir, where = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
STALLED_STEP = 2


def stall(rank: int) -> None:
    (signal_dir / f"stalled-{rank}").touch()
    time.sleep(300)  # the test kills us long before this ends


if where == "shards":
    original = dcp_fs.FileSystem.create_stream

    @contextmanager
    def slow_create_stream(self, path, mode):
        with original(self, path, mode) as stream:
            yield stream
        if mode == "wb" and layout.step_dir(STALLED_STEP) in str(path) and str(path).endswith(".distcp"):
            stall(dist.get_rank())

    dcp_fs.FileSystem.create_stream = slow_create_stream
elif where == "commit":
    original_write = LocalStore.write_bytes

    def slow_write_bytes(self, step, name, data):
        if step == STALLED_STEP and name == layout.MANIFEST:
            stall(dist.get_rank())
        return original_write(self, step, name, data)

    LocalStore.write_bytes = slow_write_bytes
else:
    raise SystemExit(f"WHERE must be 'shards' or 'commit', got {where!r}")

dist.init_process_group("gloo")
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))
ckpt = CheckpointManager(uri, keep=3, async_mode="async")
for step in (1, STALLED_STEP):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float(step))
    ckpt.save(step, {"model": model, "train": {"step": step}})
    ckpt.wait()
    assert ckpt.last_result.ok, ckpt.last_result
    (signal_dir / f"committed-{step}-{dist.get_rank()}").touch()
ckpt.close()
dist.destroy_process_group()
exit_process(0)  # process_exit.py: gloo can abort a finished rank at interpreter teardown
