"""The chart stays tied to its sources: one CRD (crds/ is the single source; the chart's
copy is a symlink that `helm package` resolves), appVersion = the package version, and the
Dockerfiles start modules that exist."""
from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tomllib

import pytest
import yaml

from .conftest import CHART, ROOT, run_helm

CRD = ROOT / "crds" / "trainingjobs.stoker.dev.yaml"


def test_app_version_is_the_package_version():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == version


def test_the_charts_crds_are_byte_identical_to_the_crds_folder():
    chart_crds = sorted(p.name for p in (CHART / "crds").iterdir())
    assert CRD.name in chart_crds and "kopf-peering.yaml" in chart_crds
    for name in chart_crds:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), name


def test_a_packaged_chart_carries_the_crd_itself_not_a_link(helm, tmp_path):
    run_helm(helm, "package", str(CHART), "--destination", str(tmp_path))
    (tgz,) = tmp_path.glob("stoker-*.tgz")
    with tarfile.open(tgz) as tar:
        member = tar.getmember(f"stoker/crds/{CRD.name}")
        assert member.isfile()
        assert tar.extractfile(member).read() == CRD.read_bytes()
        assert "stoker/values.schema.json" in tar.getnames()


def dockerfile_command(path) -> list[str]:
    """The exec-form ENTRYPOINT (or CMD when there is none) of the final stage."""
    text = path.read_text()
    final = text.split("\nFROM ")[-1]
    m = re.search(r'^ENTRYPOINT (\[.*\])$', final, re.M) or re.search(r'^CMD (\[.*\])$', final, re.M)
    assert m, f"{path}: no exec-form ENTRYPOINT/CMD in the final stage"
    return yaml.safe_load(m.group(1))


@pytest.mark.parametrize("dockerfile,module", [("operator/Dockerfile", "stoker.operator.main"),
                                               ("worker/Dockerfile", "stoker.worker.train")])
def test_dockerfile_entry_module_exists_and_imports(dockerfile, module):
    cmd = dockerfile_command(ROOT / dockerfile)
    assert cmd[:3] == ["python", "-m", module]
    # Import only: running stoker.operator.main would start the operator.
    r = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120,
                       cwd="/")
    assert r.returncode == 0, r.stderr


def test_worker_entry_module_answers_help():
    r = subprocess.run([sys.executable, "-m", "stoker.worker.train", "--help"], capture_output=True, text=True,
                       timeout=120, cwd="/")
    assert r.returncode == 0 and "usage:" in r.stdout, r.stderr


def test_dockerfiles_run_as_a_fixed_non_root_user_the_chart_expects():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    uid = values["podSecurityContext"]["runAsUser"]
    for path in ("operator/Dockerfile", "worker/Dockerfile"):
        final = (ROOT / path).read_text().split("\nFROM ")[-1]
        assert re.search(rf"^USER {uid}:{uid}$", final, re.M), path


def test_the_rendezvous_module_the_chart_starts_takes_a_port():
    r = subprocess.run([sys.executable, "-m", "stoker.operator.rendezvous", "--help"], capture_output=True,
                       text=True, timeout=120, cwd="/")
    assert r.returncode == 0 and "--port" in r.stdout, r.stderr


@pytest.mark.parametrize("dockerfile,extras", [("operator/Dockerfile", {"operator"}),
                                               ("worker/Dockerfile", {"worker"})])
def test_dockerfiles_install_the_extras_their_entry_point_needs(dockerfile, extras):
    """The base package is only the CLI: an image that installs `.` alone has no kopf / torch.
    The operator's image installs no torch at all (its rendezvous store is c10d_store)."""
    text = (ROOT / dockerfile).read_text()
    installs = re.findall(r'pip install "?\.\[([a-z,]+)\]"?', text)
    assert installs and set(installs[0].split(",")) == extras, installs
    torch = re.findall(r'pip install [^\n]*"torch', text)
    assert bool(torch) == (dockerfile == "worker/Dockerfile"), torch
