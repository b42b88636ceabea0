"""A user's own torchrun script, without Stoker: plain torch, gloo, its own checkpoints
(torch.save into CKPT_DIR, a shared volume: written then renamed, the "latest" pointer last),
resumed from the newest one on start. Deterministic, so a resumed run ends bit-identical to
an undisturbed one. Appends its step to PROGRESS_DIR/rank<r> (what a test times faults by)
and prints the parameters' sha256 at the end."""
import hashlib
import os
import time

import torch
import torch.distributed as dist

STEPS, EVERY = int(os.environ.get("STEPS", "120")), 5
CKPT = os.environ["CKPT_DIR"]
PROGRESS = os.environ.get("PROGRESS_DIR")

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
latest, start = os.path.join(CKPT, "latest"), 0
if os.path.exists(latest):
    start = int(open(latest).read())
    state = torch.load(os.path.join(CKPT, f"step-{start}.pt"))
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    print(f"rank {rank} resumed from step {start}", flush=True)
for step in range(start + 1, STEPS + 1):
    g = torch.Generator().manual_seed(step * world + rank)
    x = torch.randn(32, 16, generator=g)
    loss = torch.nn.functional.mse_loss(model(x), x.sum(1, keepdim=True).sin())
    opt.zero_grad()
    loss.backward()
    for p in model.parameters():
        dist.all_reduce(p.grad)
        p.grad /= world
    opt.step()
    time.sleep(0.1)
    if step % EVERY == 0:
        if rank == 0:
            final = os.path.join(CKPT, f"step-{step}.pt")
            torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, final + ".tmp")
            os.replace(final + ".tmp", final)
            with open(latest + ".tmp", "w") as f:
                f.write(str(step))
            os.replace(latest + ".tmp", latest)
        dist.barrier()
    if PROGRESS:
        with open(os.path.join(PROGRESS, f"rank{rank}"), "a") as f:
            f.write(f"{step} {time.time()}\n")
if rank == 0:
    digest = hashlib.sha256(b"".join(bytes(p.detach().flatten().view(torch.uint8).tolist())
                                      for p in model.parameters())).hexdigest()   # no numpy here
    print(f"final step {STEPS} checksum {digest}", flush=True)
dist.destroy_process_group()
