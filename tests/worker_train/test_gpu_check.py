"""bench/gpu_check.py, the check prepared for a lent GPU machine, runs every section on
the CPU (``--device cpu --tiny``) where only torch, numpy and this repository can be
imported (as on that machine), and its verdicts hold: exact resume in a new process,
saving does not perturb training, the checkpoint reads back with plain DCP, FSDP2
losses agree with the reference. Its FLOP arithmetic matches the model."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.gpucheck import measure

from .harness import REPO

TORCH_ONLY = REPO / "tests" / "worker_train" / "torch_only"
SECTIONS = ("peak", "throughput", "fsdp_offload", "async_checkpoint", "throughput_compiled")


@pytest.fixture(scope="module")
def tiny_cpu_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    out = tmp / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TORCH_ONLY), os.environ.get("PYTHONPATH", "")]),
           "TORCH_ONLY_BLOCKED_LOG": str(tmp / "blocked.log")}
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--device", "cpu", "--tiny", "--out", str(out),
                           "--workdir", str(tmp / "work")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert out.exists(), f"no JSON written (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc, json.loads(out.read_text())


@pytest.mark.torch
@pytest.mark.slow
def test_every_section_runs_on_cpu_with_only_torch_numpy_and_the_repo(tiny_cpu_run):
    proc, r = tiny_cpu_run
    assert r["failed"] == [], json.dumps({k: v.get("error") for k, v in r["sections"].items()}, indent=1)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert r["benchmark"] == "gpu_check" and "--tiny" in r["command"]
    assert r["env"]["torch"] and r["env"]["device"] == "cpu" and r["commit"] and len(r["source_sha256"]) == 64
    assert set(r["sections"]) == set(SECTIONS)
    for name in SECTIONS[:-1]:
        assert r["sections"][name]["status"] == "ok", name
    compiled = r["sections"]["throughput_compiled"]
    assert compiled["status"] == "skipped" and "--compile" in compiled["reason"]
    assert r["sections"]["peak"]["peak_tflops"] > 0 and r["sections"]["peak"]["samples"]


@pytest.mark.torch
@pytest.mark.slow
def test_throughput_reports_tokens_per_second_and_mfu_per_variant(tiny_cpu_run):
    _, r = tiny_cpu_run
    tp = r["sections"]["throughput"]
    assert set(tp["variants"]) == {"bf16", "bf16_ac", "bf16_nondeterministic"}
    for name, v in tp["variants"].items():
        assert v["status"] == "ok", (name, v.get("error"))
        assert v["tokens_per_s"] > 0 and 0 < v["mfu"] and len(v["step_s_samples"]) == r["profile"]["tp_steps"]
        assert v["hfu"] >= v["mfu"]
    assert tp["variants"]["bf16_ac"]["hfu"] > tp["variants"]["bf16_ac"]["mfu"], "AC recomputes: HFU > MFU"
    assert "6*N + 12*L*d*T" in tp["flops_formula"]
    assert r["headline"]["best_mfu"] == max(v["mfu"] for v in tp["variants"].values())


@pytest.mark.torch
@pytest.mark.slow
def test_fsdp_losses_agree_within_a_tolerance_far_below_the_training_signal(tiny_cpu_run):
    _, r = tiny_cpu_run
    fs = r["sections"]["fsdp_offload"]
    # on the CPU offload does not apply (parallel.cpu_offload needs CUDA): FSDP2 vs the plain trainer
    assert fs["offload_applies"] is False and fs["candidate"] == "single" and fs["offload_not_applied_reason"]
    assert fs["agree"] is True and fs["agreement"]["tolerance_below_signal"] is True
    assert len(fs["legs"]["fsdp_zero3"]["losses"]) == r["profile"]["fsdp_steps"]


@pytest.mark.torch
@pytest.mark.slow
def test_async_checkpoint_resumes_bit_identically_in_a_new_process(tiny_cpu_run):
    _, r = tiny_cpu_run
    ck = r["sections"]["async_checkpoint"]
    ex = ck["exact_resume"]
    assert ex["resumed_from"] == ex["expected_resume_step"] == r["profile"]["ck_interval"]
    assert ex["bit_identical"] is True, ex["differing_b_vs_a"]
    assert ex["saving_does_not_perturb"] is True, ex["differing_c_vs_a"]
    assert ex["losses"]["b_resumed"] == ex["losses"]["a_uninterrupted"][r["profile"]["ck_interval"]:]
    plain = ck["plain_dcp_load"]
    assert plain["model_matches_run"] is True and plain["train_state_step"] == r["profile"]["ck_steps"]
    steps = [s["step"] for s in ck["saves"]]
    assert steps == [3, 6] and all(s["ok"] and s["blocked_s"] > 0 and "loop_blocked_s" in s for s in ck["saves"])
    assert ck["staging"] is None  # pinned staging needs CUDA


def test_flops_of_the_1b_configuration():
    f = measure.model_flops(d_model=2048, n_layers=18, vocab_size=50304, seq_len=2048)
    assert f["block_matmul_params"] == 18 * 12 * 2048 ** 2
    assert f["matmul_params"] == 18 * 12 * 2048 ** 2 + 50304 * 2048
    assert f["attention_flops_per_token"] == 12 * 18 * 2048 * 2048
    assert f["model_flops_per_token"] == 6 * f["matmul_params"] + f["attention_flops_per_token"] == 6_959_923_200


@pytest.mark.torch
def test_matmul_parameter_count_is_the_models_linear_weights():
    torch = pytest.importorskip("torch")
    from stoker.worker.model import GPT, model_args

    with torch.device("meta"):
        model = GPT(model_args("1b", vocab_size=50304, max_seq_len=2048))
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    a = model.args
    f = measure.model_flops(d_model=a.d_model, n_layers=a.n_layers, vocab_size=a.vocab_size, seq_len=2048,
                            mlp_ratio=a.mlp_ratio)
    assert f["matmul_params"] == linear


def test_loss_agreement_fails_a_leg_that_did_not_learn():
    ref = [4.0, 3.5, 3.1, 2.8]
    same = measure.loss_agreement(ref, [4.0, 3.5001, 3.1, 2.8002], rtol=1e-3)
    assert same["agree"] and same["tolerance_below_signal"]
    stuck = measure.loss_agreement(ref, [4.0, 4.0, 4.0, 4.0], rtol=1e-3)
    assert not stuck["agree"] and stuck["max_abs_diff"] == pytest.approx(1.2)
    assert not measure.loss_agreement(ref, [4.0, float("nan"), 3.1, 2.8], rtol=1e-3)["agree"]
    with pytest.raises(ValueError, match="length"):
        measure.loss_agreement(ref, ref[:2], rtol=1e-3)


def test_differing_names_lists_the_parameters_that_differ():
    a = {"w": ("float32", "(2,)", "aa"), "b": ("float32", "(2,)", "bb")}
    assert measure.differing_names(a, dict(a)) == {"count": 0, "of": 2, "first": []}
    assert measure.differing_names(a, {**a, "b": ("float32", "(2,)", "xx")})["first"] == ["b"]
