"""Any torchrun script, reporting to the Stoker operator and checkpointing with Stoker.

    torchrun --nproc-per-node 2 examples/sdk_script.py

Inside a TrainingJob pod the operator sets STOKER_OPERATOR_ADDR, STOKER_JOB_TOKEN,
the job identity and STOKER_CHECKPOINT_URI; outside one the SDK is a no-op and
checkpoints go to ./checkpoints.
"""
import os
import time

import torch
import torch.distributed as dist

from stoker.worker.checkpoint import CheckpointManager
from stoker.worker.sdk import Session, any_rank


def main() -> None:
    dist.init_process_group("gloo")
    model = torch.nn.Linear(32, 1)
    optim = torch.optim.SGD(model.parameters(), lr=0.01)
    train = {"step": 0}
    state = {"model": model, "optim": optim, "train": train}

    with Session.from_env() as session:
        ckpt = CheckpointManager(os.environ.get("STOKER_CHECKPOINT_URI", "./checkpoints"), keep=3,
                                 on_result=session.report_checkpoint)
        session.set_phase("RESTORING")
        resumed = ckpt.load(state)
        session.set_last_committed_step(resumed)
        for step in range(train["step"] + 1, 201):
            t0 = time.perf_counter()
            loss = model(torch.randn(16, 32)).pow(2).mean()
            optim.zero_grad()
            loss.backward()
            optim.step()
            train["step"] = step
            session.step(step, loss=loss.item(), step_time_seconds=time.perf_counter() - t0)
            # every rank must decide the same way: one tiny all-reduce
            asked = any_rank(session.checkpoint_requested())
            if step % 50 == 0 or asked:
                ckpt.save(step, state)   # returns once copied to CPU; on_result acks the command
            if asked and any_rank(session.stop_requested()):
                break
        ckpt.close()                     # waits for the last upload
        session.set_phase("FINISHED")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
