"""CheckpointManager behaviour on a local directory and on S3 (MinIO)."""
import random
import threading
from contextlib import contextmanager

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint.filesystem as dcp_fs
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.stateful import Stateful

from stoker.common import layout
from stoker.worker.checkpoint import CheckpointManager, open_store

pytestmark = pytest.mark.torch


class Loader(Stateful):
    """A data source with a position and its own generator (like a sampler)."""

    def __init__(self):
        self.position = 0
        self.gen = torch.Generator().manual_seed(1234)

    def next_batch(self):
        self.position += 1
        x = torch.randn(8, 16, generator=self.gen)
        return x, x.sum(dim=1, keepdim=True) * 0.1

    def state_dict(self):
        return {"position": self.position, "gen": self.gen.get_state()}

    def load_state_dict(self, sd):
        self.position = sd["position"]
        self.gen.set_state(sd["gen"])


class Trainer(Stateful):
    """Model + optimizer + LR scheduler + RNG + data position, all in one train state."""

    def __init__(self):
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Dropout(0.3), torch.nn.Linear(32, 1))
        self.optim = torch.optim.AdamW(self.model.parameters(), lr=1e-2)
        self.sched = torch.optim.lr_scheduler.StepLR(self.optim, step_size=2, gamma=0.5)
        self.loader = Loader()
        self.step = 0
        torch.manual_seed(99)  # the RNG that dropout consumes
        random.seed(7)
        np.random.seed(7)

    def train_step(self):
        x, y = self.loader.next_batch()
        noise = random.random() + float(np.random.rand())  # python + numpy RNGs in the loop
        loss = ((self.model(x) - y) ** 2).mean() * (1 + 0 * noise)
        self.optim.zero_grad()
        loss.backward()
        self.optim.step()
        self.sched.step()
        self.step += 1
        return loss.item(), noise

    def state(self):
        return {"train": self, "loader": self.loader}

    def state_dict(self):
        model_sd, optim_sd = get_state_dict(self.model, self.optim)
        return {"model": model_sd, "optim": optim_sd, "sched": self.sched.state_dict(), "step": self.step,
                "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                        "numpy": np.random.get_state()}}

    def load_state_dict(self, sd):
        set_state_dict(self.model, self.optim, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
        self.sched.load_state_dict(sd["sched"])
        self.step = sd["step"]
        torch.set_rng_state(sd["rng"]["torch"])
        random.setstate(sd["rng"]["python"])
        np.random.set_state(sd["rng"]["numpy"])


def test_resume_continues_bit_exactly(uri):
    """Train 6 steps straight vs. 3 steps, checkpoint, fresh process state, restore, 3 more."""
    straight = Trainer()
    with CheckpointManager(uri, async_mode="async") as ckpt:
        trace = []
        for _ in range(6):
            trace.append(straight.train_step())
            if straight.step == 3:
                ckpt.save(3, straight.state())
    assert ckpt.last_result.ok

    resumed = Trainer()
    resumed.train_step()  # diverge on purpose: restore must overwrite all of it
    with CheckpointManager(uri, async_mode="disabled") as ckpt:
        assert ckpt.load(resumed.state()) == 3
    assert (resumed.step, resumed.loader.position, resumed.sched.last_epoch) == (3, 3, 3)
    resumed_trace = [resumed.train_step() for _ in range(3)]
    assert resumed_trace == trace[3:]
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    sa, sb = straight.optim.state_dict()["state"], resumed.optim.state_dict()["state"]
    assert all(torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]) for k in sa)


def test_retention_keeps_the_last_k(uri):
    model = torch.nn.Linear(4, 4)
    with CheckpointManager(uri, keep=2, async_mode="async") as ckpt:
        for step in range(1, 6):
            ckpt.save(step, {"model": model})
        ckpt.wait()
        assert ckpt.committed_steps() == [4, 5]
        assert ckpt.store.list_steps() == [4, 5]  # old folders are gone, not just un-committed
        manifest = ckpt.store.read_bytes(5, layout.MANIFEST)
    assert b'"step": 5' in manifest and b"__0_0.distcp" in manifest


def test_no_checkpoint_yet_loads_nothing(uri):
    model = torch.nn.Linear(4, 4)
    before = model.weight.clone()
    with CheckpointManager(uri) as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.load({"model": model}) is None
    assert torch.equal(model.weight, before)


def test_uncommitted_folder_is_never_loaded(tmp_path):
    model = torch.nn.Linear(4, 4)
    with CheckpointManager(str(tmp_path), async_mode="disabled") as ckpt:
        ckpt.save(1, {"model": model})
        with torch.no_grad():
            model.weight.fill_(5.0)
        ckpt.save(2, {"model": model})
    (tmp_path / layout.step_dir(2) / layout.COMMIT_MARKER).unlink()
    fresh = torch.nn.Linear(4, 4)
    with CheckpointManager(str(tmp_path)) as ckpt:
        assert ckpt.latest_step() == 1
        assert ckpt.load({"model": fresh}) == 1
    assert not torch.all(fresh.weight == 5.0)


@contextmanager
def gated_local_writes(step: int):
    """Local shard writes of ``step`` wait until the yielded event is set."""
    gate, entered = threading.Event(), threading.Event()
    original = dcp_fs.FileSystem.create_stream

    @contextmanager
    def create_stream(self, path, mode):
        if mode == "wb" and layout.step_dir(step) in str(path):
            entered.set()
            assert gate.wait(30), "test never opened the gate"
        with original(self, path, mode) as stream:
            yield stream

    dcp_fs.FileSystem.create_stream = create_stream
    try:
        yield gate, entered
    finally:
        gate.set()
        dcp_fs.FileSystem.create_stream = original


def test_async_save_returns_before_upload_and_snapshots_the_state(tmp_path):
    model = torch.nn.Linear(4, 4)
    with torch.no_grad():
        model.weight.fill_(1.0)
    with CheckpointManager(str(tmp_path), async_mode="async") as ckpt, gated_local_writes(1) as (gate, entered):
        ckpt.save(1, {"model": model})          # returns although no shard may be written yet
        assert entered.wait(30)
        assert ckpt.latest_step() is None
        with torch.no_grad():
            model.weight.fill_(2.0)            # training goes on and changes the weights
        gate.set()
        assert ckpt.wait().ok
    fresh = torch.nn.Linear(4, 4)
    CheckpointManager(str(tmp_path)).load({"model": fresh})
    assert torch.all(fresh.weight == 1.0)       # the checkpoint holds the state at save()


def test_failed_write_is_reported_not_raised_and_next_save_commits(tmp_path):
    model = torch.nn.Linear(4, 4)
    results = []
    original = dcp_fs.FileSystem.create_stream

    @contextmanager
    def broken(self, path, mode):
        if mode == "wb" and layout.step_dir(2) in str(path):
            raise OSError(28, "No space left on device")
        with original(self, path, mode) as stream:
            yield stream

    with CheckpointManager(str(tmp_path), async_mode="async", on_result=results.append) as ckpt:
        ckpt.save(1, {"model": model})
        dcp_fs.FileSystem.create_stream = broken
        try:
            ckpt.save(2, {"model": model})
            failed = ckpt.wait()
        finally:
            dcp_fs.FileSystem.create_stream = original
        ckpt.save(3, {"model": model})
        ckpt.wait()
        assert ckpt.committed_steps() == [1, 3]
    assert [(r.step, r.ok) for r in results] == [(1, True), (2, False), (3, True)]
    assert "No space left" in failed.error
    assert not (tmp_path / layout.step_dir(2) / layout.COMMIT_MARKER).exists()


def test_bad_arguments_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="keep must be >= 1"):
        CheckpointManager(str(tmp_path), keep=0)
    with pytest.raises(ValueError, match="async_mode"):
        CheckpointManager(str(tmp_path), async_mode="thread")
    with pytest.raises(ValueError, match="s3://BUCKET"):
        open_store("gs://bucket/x")
    with pytest.raises(ValueError, match="STOKER_CHECKPOINT_URI"):
        open_store("")


@pytest.mark.cluster
def test_multipart_sized_shards_round_trip_on_s3(s3_uri):
    """Shards above the multipart threshold (16 MiB) go up in parallel parts."""
    state = {"big": {"w": torch.randn(6 * 2**20)}}  # 24 MiB
    with CheckpointManager(s3_uri, async_mode="async") as ckpt:
        ckpt.save(1, state)
        assert ckpt.wait().ok
        assert max(ckpt.store.list_files(1).values()) > 16 * 2**20
    target = {"big": {"w": torch.zeros(6 * 2**20)}}
    assert CheckpointManager(s3_uri).load(target) == 1
    assert torch.equal(target["big"]["w"], state["big"]["w"])


def test_load_failure_is_an_ordinary_error_naming_the_step(tmp_path):
    model = torch.nn.Linear(4, 4)
    with CheckpointManager(str(tmp_path), async_mode="disabled") as ckpt:
        ckpt.save(7, {"model": model})
    for shard in (tmp_path / layout.step_dir(7)).glob("*.distcp"):
        shard.unlink()  # storage lost a shard of a committed checkpoint
    with pytest.raises(RuntimeError, match="step 7"):
        CheckpointManager(str(tmp_path)).load({"model": torch.nn.Linear(4, 4)})
