"""Pure parts of the trainer: LR schedule, data order, config validation, model
building blocks. In-process, no torchrun."""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from stoker.worker import config as cfgmod  # noqa: E402
from stoker.worker.data import (  # noqa: E402
    TRAIN, DistributedBatcher, SyntheticLM, SyntheticSpec, global_sample_ids, grad_accum_steps,
)
from stoker.worker.model import GPT, model_args, prune_to_stage, stage_layer_ranges  # noqa: E402
from stoker.worker.parallel import build_model  # noqa: E402
from stoker.worker.state import lr_factor  # noqa: E402

pytestmark = pytest.mark.torch


# ------------------------------------------------------------------ LR schedule
def test_lr_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    kw = {"warmup": 4, "total": 20, "min_ratio": 0.1}
    assert [lr_factor(s, **kw) for s in (1, 2, 3, 4)] == [0.25, 0.5, 0.75, 1.0]
    after = [lr_factor(s, **kw) for s in range(4, 21)]
    assert all(a >= b for a, b in zip(after, after[1:])), "decay must be monotone"
    assert lr_factor(20, **kw) == pytest.approx(0.1)
    assert lr_factor(12, **kw) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert lr_factor(500, **kw) == pytest.approx(0.1), "past the end it stays at the floor"


def test_lr_without_warmup_starts_at_peak():
    assert lr_factor(0, warmup=0, total=10, min_ratio=0.0) == 1.0
    assert lr_factor(10, warmup=0, total=10, min_ratio=0.0) == pytest.approx(0.0)


# ------------------------------------------------------------------------- data
SPEC = SyntheticSpec(seed=3, vocab_size=32, seq_len=8, train_samples=50, val_samples=10)


def consumed(world: int, micro: int, steps: int, global_batch: int = 12, start: int = 0) -> list[list[int]]:
    """Per optimizer step, the global sample ids that all DP ranks together consume, in rank order."""
    data = SyntheticLM(SPEC)
    batchers = [DistributedBatcher(data, global_batch=global_batch, micro_batch=micro, dp_degree=world, dp_rank=r,
                                   order_seed=SPEC.seed) for r in range(world)]
    out = []
    for b in batchers:
        b.load_state_dict({"sample_index": start})
    for _ in range(steps):
        ids = []
        for b in batchers:
            ids += b.local_ids(b.position).tolist()
            b.position += global_batch
        out.append(ids)
    return out


def test_global_sample_order_is_independent_of_world_size_and_micro_batch():
    reference = consumed(world=1, micro=12, steps=9)  # 9*12 = 108 samples: crosses two epochs of 50
    for world, micro in [(1, 1), (2, 3), (3, 2), (4, 3), (6, 1), (12, 1)]:
        assert consumed(world, micro, steps=9) == reference, f"world={world} micro={micro}"


def test_each_epoch_is_a_permutation_and_epochs_differ():
    ids = global_sample_ids(SPEC.seed, 50, 0, 100)
    assert sorted(ids[:50]) == list(range(50)) and sorted(ids[50:]) == list(range(50))
    assert list(ids[:50]) != list(ids[50:])


def test_micro_batches_have_the_right_shapes_and_accumulation_adapts():
    data = SyntheticLM(SPEC)
    b = DistributedBatcher(data, global_batch=12, micro_batch=2, dp_degree=3, dp_rank=1, order_seed=0)
    micro = b.next_batch()
    assert b.accum == len(micro) == 2
    assert all(x.shape == (2, 8) and y.shape == (2, 8) for x, y in micro)
    x, y = micro[0]
    assert torch.equal(x[:, 1:], y[:, :-1]), "targets are inputs shifted by one"
    with pytest.raises(ValueError, match="train.global_batch"):
        grad_accum_steps(12, 5, 2)


def test_sampler_state_is_the_global_position_and_resumes_exactly():
    data = SyntheticLM(SPEC)
    a = DistributedBatcher(data, global_batch=12, micro_batch=2, dp_degree=2, dp_rank=0, order_seed=0)
    for _ in range(5):
        a.next_batch()
    assert a.state_dict() == {"sample_index": 60, "epoch": 1}
    # resume the same position at another world size: same global samples next
    b = DistributedBatcher(data, global_batch=12, micro_batch=3, dp_degree=4, dp_rank=0, order_seed=0)
    b.load_state_dict(a.state_dict())
    assert consumed(4, 3, 1, start=60) == consumed(2, 2, 1, start=60)
    assert b.next_batch()[0][0].shape == (3, 8)


def test_samples_are_a_pure_function_of_seed_split_and_index():
    data = SyntheticLM(SPEC)
    both = data.samples(TRAIN, [4, 9])
    assert torch.equal(both[1], data.samples(TRAIN, [9])[0])
    assert torch.equal(both, SyntheticLM(SPEC).samples(TRAIN, [4, 9]))
    assert not torch.equal(data.samples(TRAIN, [4]), data.samples(1, [4])), "validation split is different data"


def test_the_process_is_learnable_mostly_following_the_permutation():
    data = SyntheticLM(SyntheticSpec(seed=1, vocab_size=64, seq_len=64, train_samples=10, val_samples=1, noise=0.1))
    tok = data.samples(TRAIN, list(range(10))).numpy()
    follows = (data.perm[tok[:, :-1]] == tok[:, 1:]).mean()
    assert 0.85 < follows < 0.95
    assert 0 < data.entropy_floor() < math.log(64) / 2


# ----------------------------------------------------------------------- config
def test_defaults_validate():
    cfg = cfgmod.from_dict({}, environ={})
    assert cfg.parallel.mode == "auto" and cfg.model.size == "tiny"
    assert cfgmod.validate_for_world(cfg, 4) == (1, 4) and cfg.parallel.mode == "ddp", "auto: ddp for >1 process"
    assert cfgmod.resolve_mode("auto", 1) == "single" and cfgmod.resolve_mode("zero3", 1) == "zero3"


@pytest.mark.parametrize("raw, field", [
    ({"parallel": {"mode": "zero4"}}, "parallel.mode"),
    ({"parallel": {"mod": "ddp"}}, "parallel.mod"),
    ({"trian": {}}, "trian"),
    ({"train": {"steps": "ten"}}, "train.steps"),
    ({"train": {"steps": 0}}, "train.steps"),
    ({"train": {"global_batch": 10, "micro_batch": 4}}, "train.global_batch"),
    ({"train": {"steps": 5, "warmup_steps": 6}}, "train.warmup_steps"),
    ({"train": {"lr": 0}}, "train.lr"),
    ({"model": {"size": "huge"}}, "model.size"),
    ({"parallel": {"mode": "pipeline-1f1b", "pp": 1}}, "parallel.pp"),
    ({"parallel": {"mode": "ddp", "pp": 2}}, "parallel.pp"),
    ({"parallel": {"mode": "pipeline-gpipe", "pp": 2}, "model": {"tie_embeddings": True}}, "model.tie_embeddings"),
    ({"parallel": {"mode": "ddp", "cpu_offload": True}}, "parallel.cpu_offload"),
    ({"parallel": {"bf16": "yes"}}, "parallel.bf16"),
    ({"checkpoint": {"async_mode": "sometimes"}}, "checkpoint.async_mode"),
    ({"checkpoint": {"keep": 0}}, "checkpoint.keep"),
    ({"debug": {"stall_after_step": 3}}, "debug.stall_after_step"),
])
def test_config_errors_name_the_field(raw, field):
    with pytest.raises(cfgmod.ConfigError) as err:
        cfgmod.from_dict(raw, environ={})
    assert str(err.value).startswith(field), str(err.value)


@pytest.mark.parametrize("overrides, world, field", [
    ({"parallel": {"mode": "ddp"}, "train": {"global_batch": 8, "micro_batch": 2}}, 3, "train.global_batch"),
    ({"parallel": {"mode": "single"}}, 2, "parallel.mode"),
    ({"parallel": {"mode": "pipeline-1f1b", "pp": 2, "dp": 2}}, 6, "parallel.pp"),
    ({"parallel": {"mode": "pipeline-1f1b", "pp": 4}, "train": {"global_batch": 8, "micro_batch": 4}}, 4,
     "train.micro_batch"),
])
def test_world_size_dependent_errors_name_the_field(overrides, world, field):
    cfg = cfgmod.from_dict(overrides, environ={})
    with pytest.raises(cfgmod.ConfigError) as err:
        cfgmod.validate_for_world(cfg, world)
    assert str(err.value).startswith(field), str(err.value)


def test_pipeline_with_data_parallel_degrees():
    cfg = cfgmod.from_dict({"parallel": {"mode": "pipeline-gpipe", "pp": 2}, "train": {"global_batch": 8}},
                           environ={})
    assert cfgmod.validate_for_world(cfg, 4) == (2, 2)


def test_operator_environment_overrides_checkpoint_and_metrics(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("checkpoint: {uri: /nope, interval: 5}\n")
    cfg = cfgmod.load(path, environ={"STOKER_CHECKPOINT_URI": "s3://b/job", "STOKER_CHECKPOINT_INTERVAL_STEPS": "7",
                                     "STOKER_METRICS_PATH": "/tmp/m.jsonl"})
    assert (cfg.checkpoint.uri, cfg.checkpoint.interval, cfg.output.metrics_path) == ("s3://b/job", 7, "/tmp/m.jsonl")
    with pytest.raises(cfgmod.ConfigError, match="STOKER_CHECKPOINT_KEEP"):
        cfgmod.load(path, environ={"STOKER_CHECKPOINT_KEEP": "many"})


# ------------------------------------------------------------------------ model
def test_init_is_deterministic_per_parameter_name_whatever_the_device_or_stage():
    args = model_args("tiny", vocab_size=32, max_seq_len=8)
    a = build_model(args, seed=5, device=torch.device("cpu"))
    b = build_model(args, seed=5, device=torch.device("cpu"))
    stage1 = build_model(args, seed=5, device=torch.device("cpu"), stage=1, n_stages=2)
    sa = a.state_dict()
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in sa.items())
    assert stage1.state_dict().keys() < sa.keys()
    assert all(torch.equal(v, sa[k]) for k, v in stage1.state_dict().items()), "a stage has the full model's values"
    c = build_model(args, seed=6, device=torch.device("cpu"))
    assert not torch.equal(c.layers["0"].attn.qkv.weight, a.layers["0"].attn.qkv.weight)


def test_pipeline_stages_compose_to_the_full_model():
    args = model_args("tiny", vocab_size=32, max_seq_len=8)
    full = build_model(args, seed=1, device=torch.device("cpu"))
    stages = [build_model(args, seed=1, device=torch.device("cpu"), stage=s, n_stages=3) for s in range(3)]
    assert [list(s.layers.keys()) for s in stages] == [["0", "1"], ["2"], ["3"]]
    x = torch.randint(0, 32, (2, 8))
    h = x
    for s in stages:
        h = s(h)
    torch.testing.assert_close(h, full(x), rtol=0, atol=0)


def test_layer_split_and_tied_head():
    assert [list(r) for r in stage_layer_ranges(5, 2)] == [[0, 1, 2], [3, 4]]
    with pytest.raises(ValueError, match="parallel.pp"):
        stage_layer_ranges(2, 3)
    tied = build_model(model_args("tiny", vocab_size=32, max_seq_len=8, tie_embeddings=True), 0, torch.device("cpu"))
    assert tied.head.weight is tied.tok_emb.weight
    with pytest.raises(ValueError, match="model.tie_embeddings"):
        prune_to_stage(GPT(tied.args), 0, 2)


def test_named_sizes_grow_to_about_a_billion():
    counts = {}
    for size in ("tiny", "small", "1b"):
        with torch.device("meta"):
            counts[size] = GPT(model_args(size, vocab_size=50304, max_seq_len=2048)).num_params()
    assert counts["tiny"] < counts["small"] < counts["1b"]
    assert 0.9e9 < counts["1b"] < 1.3e9
    with torch.device("meta"):
        assert GPT(model_args("tiny", vocab_size=64, max_seq_len=16)).num_params() < 20_000


def test_command_line_overrides(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"train": {"steps": 3}}')
    cfg = cfgmod.load(path, environ={}, overrides=["parallel.mode=zero3", "train.lr=3e-4", "parallel.bf16=true"])
    assert (cfg.train.steps, cfg.parallel.mode, cfg.train.lr, cfg.parallel.bf16) == (3, "zero3", 3e-4, True)
    assert cfgmod.load(None, environ={}, overrides=["train.steps=7"]).train.steps == 7
    with pytest.raises(cfgmod.ConfigError, match="SECTION.FIELD=VALUE"):
        cfgmod.load(None, environ={}, overrides=["steps=7"])
    with pytest.raises(cfgmod.ConfigError, match="^train.stepz"):
        cfgmod.load(None, environ={}, overrides=["train.stepz=7"])


def test_example_trainer_configs_are_valid():
    from .harness import REPO

    examples = sorted((REPO / "examples").glob("train-*.yaml"))
    assert examples
    for path in examples:
        cfg = cfgmod.load(path, environ={})
        world = cfg.parallel.pp * (cfg.parallel.dp or 1)
        cfgmod.validate_for_world(cfg, world)


def test_cpu_offload_needs_gpus():
    cfg = cfgmod.from_dict({"parallel": {"mode": "zero3", "cpu_offload": True}}, environ={})
    cfgmod.validate_for_device(cfg, "cuda")
    with pytest.raises(cfgmod.ConfigError, match="^parallel.cpu_offload"):
        cfgmod.validate_for_device(cfg, "cpu")


def test_deterministic_training_is_strict_on_cuda():
    """warn_only=True leaves SDPA's flash / memory-efficient backward on their atomic-add
    kernels on CUDA (they pick the deterministic one only in strict mode): exact resume
    on a GPU needs strict mode there."""
    from stoker.worker.trainer import deterministic_algorithms_kwargs

    assert deterministic_algorithms_kwargs("cuda") == {"mode": True, "warn_only": False}
    assert deterministic_algorithms_kwargs("cpu") == {"mode": True, "warn_only": True}
