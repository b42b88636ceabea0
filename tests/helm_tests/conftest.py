"""Fixtures for the chart tests: the helm binary (built from its pinned Go module, no
cluster needed) and a renderer that returns the chart's objects as parsed YAML."""
from __future__ import annotations

import json
import pathlib
import subprocess

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "stoker"
KUBE_VERSION = "1.35.0"  # the local control plane's version (devcluster/stoker/devcluster/README.md)


@pytest.fixture(scope="session")
def helm() -> str:
    out = subprocess.run([str(ROOT / "devcluster/stoker/devcluster/build-tools.sh"), "helm"], capture_output=True, text=True,
                         check=True, timeout=1800).stdout
    paths = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return paths["helm"]


class Rendered(list):
    """The objects `helm template` produced, with lookups by kind/name."""

    def kinds(self) -> list[str]:
        return sorted(o["kind"] for o in self)

    def of(self, kind: str) -> list[dict]:
        return [o for o in self if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict:
        found = [o for o in self.of(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
        return found[0]


def run_helm(helm: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([helm, *args], capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
    return r


@pytest.fixture(scope="session")
def render(helm, tmp_path_factory):
    """render(values_dict, namespace=...) -> Rendered (CRDs included)."""
    tmp = tmp_path_factory.mktemp("values")
    count = iter(range(10**6))

    def _render(values: dict | None = None, namespace: str = "stoker-system", release: str = "stoker") -> Rendered:
        f = tmp / f"values-{next(count)}.json"
        f.write_text(json.dumps(values or {}))
        r = run_helm(helm, "template", release, str(CHART), "--namespace", namespace, "--include-crds",
                     "--kube-version", KUBE_VERSION, "-f", str(f))
        return Rendered(d for d in yaml.safe_load_all(r.stdout) if d)

    return _render
