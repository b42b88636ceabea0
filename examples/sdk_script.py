"""Any torchrun script, reporting to the Stoker operator and checkpointing with Stoker,
resuming bit-identically after a kill -9: AdamW, a learning-rate scheduler, dropout (RNG)
and a seeded, shuffling DistributedSampler whose position is part of the checkpoint.

    torchrun --nproc-per-node 2 examples/sdk_script.py [--steps 200] [--every 25]

Inside a TrainingJob pod the operator sets STOKER_OPERATOR_ADDR, STOKER_JOB_TOKEN,
the job identity and STOKER_CHECKPOINT_URI; outside one the SDK is a no-op and
checkpoints go to ./checkpoints. What a checkpoint holds, part by part:

    model      ModelState([model])              weights, keyed by parameter name
    optimizer  OptimizerState([model], [optim]) AdamW moments and step counts (a plain
                                                optimizer that has not stepped would have
                                                nothing to load into: refused, see state.py)
    scheduler  the torch LR scheduler itself    (it has state_dict/load_state_dict)
    data       DataPosition                     epoch and batches consumed in it
    train      TrainState(seed, rank, world)    step and every rank's RNG states
"""
import argparse
import hashlib
import os
import time

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from stoker.worker.checkpoint import CheckpointManager
from stoker.worker.sdk import Session, any_rank, exit_process
from stoker.worker.state import ModelState, OptimizerState, TrainState, seed_everything

SEED = 1234


class DataPosition:
    """Where the data loader is: the sampler's epoch and the batches consumed in it."""

    def __init__(self) -> None:
        self.epoch, self.batch = 0, 0

    def state_dict(self):
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


def batches(loader: DataLoader, sampler: DistributedSampler, pos: DataPosition):
    """Endless batches that continue exactly at `pos` (epoch, batch) after a resume."""
    while True:
        sampler.set_epoch(pos.epoch)  # the shuffle is a function of (seed, epoch): the same after a restart
        for i, batch in enumerate(loader):
            if i < pos.batch:
                continue              # consumed before the checkpoint
            pos.batch = i + 1
            yield batch
        pos.epoch, pos.batch = pos.epoch + 1, 0


def checksum(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode() + p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--every", type=int, default=25, help="checkpoint every N steps")
    args = ap.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    seed_everything(SEED)  # the same initial weights on every rank
    data = torch.Generator().manual_seed(SEED)
    xs = torch.randn(512, 32, generator=data)
    ys = xs @ torch.randn(32, 1, generator=data) + 0.1 * torch.randn(512, 1, generator=data)
    sampler = DistributedSampler(TensorDataset(xs, ys), num_replicas=world, rank=rank, shuffle=True, seed=SEED)
    # Its own generator: a DataLoader otherwise draws a seed from the global RNG each time an
    # iterator starts, and a resume starts one mid-epoch - that would shift dropout's masks.
    loader = DataLoader(TensorDataset(xs, ys), batch_size=16, sampler=sampler,
                        generator=torch.Generator().manual_seed(SEED))
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                                torch.nn.Linear(64, 1))
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.StepLR(optim, step_size=50, gamma=0.5)
    pos, train = DataPosition(), TrainState(SEED, rank, world)
    state = {"model": ModelState([model]), "optimizer": OptimizerState([model], [optim]),
             "scheduler": sched, "data": pos, "train": train}

    with Session.from_env() as session:
        ckpt = CheckpointManager(os.environ.get("STOKER_CHECKPOINT_URI", "./checkpoints"), keep=3,
                                 on_result=session.report_checkpoint)
        session.set_phase("RESTORING")
        resumed = ckpt.load(state)      # restores the RNG states too (TrainState)
        session.set_last_committed_step(resumed)
        stream = batches(loader, sampler, pos)
        for step in range(train.step + 1, args.steps + 1):
            t0 = time.perf_counter()
            x, y = next(stream)
            loss = (model(x) - y).pow(2).mean()
            optim.zero_grad()
            loss.backward()
            for p in model.parameters():  # data parallel by hand: average the gradients
                dist.all_reduce(p.grad)
                p.grad /= world
            optim.step()
            sched.step()
            train.step = step
            session.step(step, loss=loss.item(), step_time_seconds=time.perf_counter() - t0)
            # every rank must decide the same way: one tiny all-reduce
            asked = any_rank(session.checkpoint_requested())
            if step % args.every == 0 or asked:
                train.capture()          # every rank's RNG state (a collective)
                ckpt.save(step, state)   # returns once copied to CPU; on_result acks the command
            if rank == 0:
                with open("progress", "w") as f:
                    f.write(str(step))
            if asked and any_rank(session.stop_requested()):
                break
        ckpt.close()                     # waits for the last upload
        if rank == 0:
            with open("final.sha256", "w") as f:
                f.write(checksum(model))
        session.set_phase("FINISHED")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    exit_process(0)  # gloo can abort a finished rank at interpreter teardown (SIGABRT); this skips it
