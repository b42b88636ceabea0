"""torchrun worker for the resharding test (gloo on CPU).

    torchrun --nproc-per-node N reshard.py save URI EXPECTED.pt
    torchrun --nproc-per-node M reshard.py load URI EXPECTED.pt

``save`` builds an FSDP2 model (fully_shard over N ranks), trains one step with
AdamW, saves model+optimizer through the manager, and rank 0 writes the full
(unsharded) state to EXPECTED.pt. ``load`` builds the same model sharded over M
ranks, loads the newest checkpoint and checks every full tensor against
EXPECTED.pt bit for bit.
"""
import sys

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.checkpoint.stateful import Stateful
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from stoker.worker.checkpoint import CheckpointManager
from stoker.worker.sdk import exit_process

mode, uri, expected_path = sys.argv[1], sys.argv[2], sys.argv[3]


class AppState(Stateful):
    def __init__(self, model, optim):
        self.model, self.optim = model, optim

    def state_dict(self):
        m, o = get_state_dict(self.model, self.optim)
        return {"model": m, "optim": o}

    def load_state_dict(self, sd):
        set_state_dict(self.model, self.optim, model_state_dict=sd["model"], optim_state_dict=sd["optim"])


def build():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(30, 18), torch.nn.ReLU(), torch.nn.Linear(18, 7))
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, torch.optim.AdamW(model.parameters(), lr=0.1)


def full_state(model, optim):
    m, o = get_state_dict(model, optim, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {"model": m, "optim": o}


dist.init_process_group("gloo")
rank = dist.get_rank()
model, optim = build()
ckpt = CheckpointManager(uri, keep=2, async_mode="disabled")
if mode == "save":
    torch.manual_seed(1 + rank)
    model(torch.randn(4, 30)).pow(2).sum().backward()
    optim.step()
    ckpt.save(10, {"app": AppState(model, optim)})
    assert ckpt.last_result.ok, ckpt.last_result
    full = full_state(model, optim)
    if rank == 0:
        torch.save(full, expected_path)
else:
    step = ckpt.load({"app": AppState(model, optim)})
    assert step == 10, step
    full = full_state(model, optim)
    if rank == 0:
        expected = torch.load(expected_path)

        def compare(a, b, path):
            if isinstance(a, dict):
                assert set(a) == set(b), (path, set(a) ^ set(b))
                for k in a:
                    compare(a[k], b[k], f"{path}.{k}")
            elif isinstance(a, torch.Tensor):
                assert torch.equal(a, b), path
            else:
                assert a == b, (path, a, b)

        compare(full, expected, "state")
        print(f"RESHARD_OK world_size={dist.get_world_size()}", flush=True)
# every rank waits for rank 0's comparison: a rank that destroys its gloo group while a peer still
# uses it can abort in gloo's teardown ("terminate called without an active exception", CI 2026-12-03)
dist.barrier()
ckpt.close()
dist.destroy_process_group()
exit_process(0)  # and gloo can still abort at interpreter teardown after all that (CI 2026-12-04)
