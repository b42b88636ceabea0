"""The checkpoint parts a script passes to CheckpointManager restore what they hold. The
trap this guards: a plain optimizer that has not stepped yet has no state tensors, and DCP
loads in place, so its AdamW moments would silently stay empty after a "restore"."""
from __future__ import annotations

import pytest
import torch

from stoker.worker.checkpoint import CheckpointManager
from stoker.worker.state import ModelState, OptimizerState


def trained(seed: int = 0, steps: int = 3):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(steps):
        loss = model(torch.randn(4, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt


def fresh(seed: int = 1):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


def moments(opt) -> list[torch.Tensor]:
    return [st[k] for st in opt.state.values() for k in ("step", "exp_avg", "exp_avg_sq")]


def test_optimizer_state_part_restores_adamw_moments_into_a_fresh_optimizer(tmp_path):
    model, opt = trained()
    with CheckpointManager(str(tmp_path), async_mode="disabled") as ckpt:
        ckpt.save(3, {"model": ModelState([model]), "optim": OptimizerState([model], [opt])})
    model2, opt2 = fresh()
    assert not opt2.state
    with CheckpointManager(str(tmp_path), async_mode="disabled") as ckpt:
        assert ckpt.load({"model": ModelState([model2]), "optim": OptimizerState([model2], [opt2])}) == 3
    a, b = moments(opt), moments(opt2)
    assert len(a) == len(b) == 12
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), model2.parameters()))


def test_a_plain_fresh_optimizer_is_refused_with_the_fix_not_silently_left_empty(tmp_path):
    model, opt = trained()
    with CheckpointManager(str(tmp_path), async_mode="disabled") as ckpt:
        ckpt.save(3, {"model": model, "optim": opt})
    model2, opt2 = fresh()
    with CheckpointManager(str(tmp_path), async_mode="disabled") as ckpt:
        with pytest.raises(ValueError, match=r"state\['optim'\].*not stepped.*OptimizerState"):
            ckpt.load({"model": model2, "optim": opt2})
        # with no checkpoint to load (first start) a fresh optimizer is fine
    with CheckpointManager(str(tmp_path / "empty"), async_mode="disabled") as ckpt:
        assert ckpt.load({"model": model2, "optim": opt2}) is None
