"""A checkpoint saved by 4 ranks (FSDP2, gloo on CPU) loads bit-exactly into 2 ranks."""
import pytest

from .helpers import run_torchrun

pytestmark = [pytest.mark.torch, pytest.mark.slow]


def test_save_at_world_size_4_load_at_2(tmp_path):
    uri, expected = tmp_path / "ckpt", tmp_path / "expected.pt"
    run_torchrun(4, "reshard.py", "save", uri, expected)
    manifest = (uri / "step-00000010" / "stoker.json").read_text()
    assert '"world_size": 4' in manifest
    out = run_torchrun(2, "reshard.py", "load", uri, expected)
    assert "RESHARD_OK world_size=2" in out.stdout
