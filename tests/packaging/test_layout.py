"""The nested source layout: `stoker.operator` lives in operator/, and nothing we
ship shadows the standard library's `operator` module - for an editable install
(this venv) and for a regular wheel install, both run from the repository root."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROBE = (
    "import operator, sysconfig, os;"
    "from operator import eq, itemgetter;"  # the classic failure: cannot import name 'eq'
    "import stoker.common.layout, stoker.common.labels, stoker.common.env, stoker.cli.main;"
    "import importlib.util as u;"
    "assert u.find_spec('stoker.operator') is not None, 'stoker.operator not found';"
    "assert u.find_spec('stoker.worker') is not None, 'stoker.worker not found';"
    "std = os.path.realpath(sysconfig.get_paths()['stdlib']);"
    "assert os.path.realpath(operator.__file__).startswith(std), operator.__file__;"
    "print('ok', operator.__file__)"
)


def test_import_operator_is_the_standard_library():
    import operator

    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
    assert os.path.realpath(operator.__file__).startswith(stdlib)
    assert operator.eq(1, 1) and callable(operator.itemgetter)


def test_editable_install_imports_from_repo_root():
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_console_scripts_exist_and_run():
    bindir = Path(sys.executable).parent
    for name in ("stoker", "kubectl-stoker"):
        exe = bindir / name
        assert exe.exists(), f"{name} console script missing: reinstall with pip install -e ."
        out = subprocess.run([str(exe), "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "usage" in out.stdout.lower()
    kubectl_help = subprocess.run(
        [str(bindir / "kubectl-stoker"), "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    assert "kubectl stoker" in kubectl_help


@pytest.mark.slow
def test_regular_wheel_install_imports_from_repo_root(tmp_path):
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(REPO)],
        capture_output=True, text=True, timeout=600,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = dist.glob("stoker-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "stoker/operator/__init__.py" in names
    assert "stoker/worker/__init__.py" in names
    assert "stoker/common/layout.py" in names
    # `stoker` is a namespace package and nothing is installed as a top-level `operator`.
    assert "stoker/__init__.py" not in names
    assert not [n for n in names if n.startswith("operator/")]

    env_dir = tmp_path / "venv"
    # System site packages give the dependencies; the wheel itself goes in with --no-deps.
    venv.EnvBuilder(with_pip=True, system_site_packages=True).create(env_dir)
    py = env_dir / "bin" / "python"
    inst = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
        capture_output=True, text=True, timeout=600,
    )
    assert inst.returncode == 0, inst.stderr
    # Run from the repository root, where operator/ and worker/ folders sit on sys.path[0].
    out = subprocess.run(
        [str(py), "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert out.returncode == 0, out.stderr
    site = subprocess.run(
        [str(py), "-c", "import stoker.common.layout as m; print(m.__file__)"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    ).stdout
    assert str(env_dir) in site, f"imported from the checkout, not the wheel: {site}"


def test_krew_manifest_template_is_a_valid_plugin_manifest_for_the_kubectl_plugin():
    import re

    import yaml

    text = (REPO / ".krew.yaml").read_text()
    # what krew-release-bot does with the template on tag v1.2.3
    text = re.sub(r'\{\{ addURIAndSha "([^"]+)" \.TagName \}\}',
                  lambda m: f"uri: {m.group(1)}\n      sha256: {'ab' * 32}", text)
    text = text.replace("{{ .TagName }}", "v1.2.3")
    m = yaml.safe_load(text)
    assert m["apiVersion"] == "krew.googlecontainertools.github.com/v1alpha2" and m["kind"] == "Plugin"
    assert m["metadata"]["name"] == "stoker" and m["spec"]["version"] == "v1.2.3"
    assert len(m["spec"]["shortDescription"]) <= 50
    for platform in m["spec"]["platforms"]:
        assert platform["uri"].endswith("/v1.2.3/kubectl-stoker.tar.gz") and len(platform["sha256"]) == 64
        assert platform["bin"] == "kubectl-stoker" and platform["selector"]["matchExpressions"]
    # krew runs `kubectl-stoker`: the console script the distribution installs under that name
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["kubectl-stoker"] == "stoker.cli.main:main"
