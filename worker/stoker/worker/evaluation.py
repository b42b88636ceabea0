"""The built-in trainer's loss, and its validation: the mean loss over the held-out set, on every rank."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


@torch.no_grad()
def validation_loss(trainer) -> float:
    """Mean validation loss over the held-out set (all ranks get it)."""
    for m in trainer.parts:
        m.eval()
    local_sum, local_n = 0.0, 0
    if trainer.schedule is not None:
        k = trainer.batcher.accum
        for i in range(0, len(trainer.val), k):
            chunk = trainer.val[i:i + k]
            if len(chunk) < k:
                break
            x = torch.cat([c[0] for c in chunk]).to(trainer.device)
            y = torch.cat([c[1] for c in chunk]).to(trainer.device)
            losses = trainer._pipeline_pass(trainer.schedule.eval, x, y)
            local_sum += sum(float(v) for v in losses)
            local_n += len(losses)
    else:
        model = trainer.parts[0]
        for x, y in trainer.val:
            with trainer._autocast():
                local_sum += float(loss_fn(model(x.to(trainer.device)), y.to(trainer.device)))
            local_n += 1
    total, count = trainer._sum_world([local_sum, float(local_n)])
    return total / max(count, 1.0)
