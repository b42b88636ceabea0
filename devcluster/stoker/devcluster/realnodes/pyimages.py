"""Python images built here without a registry: a Debian base made by mmdebstrap from
Debian packages (python3), plus the Python packages of the environment running this code
(torch included, its CUDA libraries left out: ``import torch`` works without them and
gloo needs none) and the stoker sources. Cached by content hash like the Go tools.

This stands in for ``docker build -f worker/Dockerfile``: those Dockerfiles install torch
from download.pytorch.org or PyPI's CUDA wheels (several GB), which this machine cannot
reach or afford; the image holds the same packages as the dev environment instead."""
from __future__ import annotations

import fcntl
import hashlib
import shutil
import time
from pathlib import Path

from stoker.devcluster.realnodes.images import _run, pack

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ["python3", "ca-certificates"]
# Left out of the image: CUDA runtime libraries (GBs; CPU/gloo only here) and dev tools.
EXCLUDE = ("nvidia", "triton", "cuda", "pip", "_pytest", "pytest", "grpc_tools", "_stoker.pth",
           "__pycache__", "setuptools", "mypy", "ruff")
REPO = Path(__file__).resolve().parents[4]
STOKER_SOURCES = [REPO / "common" / "stoker", REPO / "operator" / "stoker", REPO / "worker" / "stoker"]
SITE = "/opt/stoker/site"
RECIPE = 2          # bump when _fill changes what goes into the image
# The user the chart runs as (uid 10001), as operator/Dockerfile and worker/Dockerfile add it:
# kopf asks for the user's name (getpass.getuser) at start-up and fails without an entry.
USER_ENTRY = ("stoker:x:10001:10001::/tmp:/usr/sbin/nologin\n", "stoker:x:10001:\n")


def _excluded(name: str) -> bool:
    return any(name == e or name.startswith(e + "_") or name.startswith(e + "-") for e in EXCLUDE)


def site_packages() -> Path:
    """The site-packages that holds torch (in a worktree venv it is the shared one)."""
    import importlib.util
    return Path(importlib.util.find_spec("torch").origin).parents[1]


def base_rootfs(cache: Path, log=print) -> Path:
    """Debian minbase + python3, as a tarball (mmdebstrap; ~2.5 min the first time)."""
    key = hashlib.sha256(f"{SUITE} {MIRROR} {BASE_PACKAGES}".encode()).hexdigest()[:12]
    out = cache / f"debian-python-{key}.tar"
    if not out.exists():
        t0 = time.monotonic()
        tmp = out.with_suffix(".tmp.tar")       # mmdebstrap picks the format by the extension
        _run("mmdebstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", "--quiet",
             SUITE, str(tmp), MIRROR)
        tmp.replace(out)
        log(f"[images] Debian base {out.name} in {time.monotonic() - t0:.0f}s")
    return out


def content_key(base: Path) -> str:
    h = hashlib.sha256(f"{base.name} {RECIPE} {EXCLUDE} {SITE}".encode())
    for entry in sorted(site_packages().iterdir()):
        if entry.name.endswith(".dist-info") and not _excluded(entry.name):
            h.update(entry.name.encode())
    for src in STOKER_SOURCES:
        for f in sorted(src.rglob("*.py")):
            h.update(str(f.relative_to(src)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def stoker_image(cache: Path, log=print) -> tuple[str, Path]:
    """(image ref, OCI archive) of Python 3.11 + torch (CPU) + stoker, built once per content."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".stoker-python.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        base = base_rootfs(cache, log)
        key = content_key(base)
        ref, out = f"stoker.local/stoker-python:{key}", cache / f"stoker-python-{key}.tar"
        if not out.exists():
            _build(base, ref, out, log)
    return ref, out


def _build(base: Path, ref: str, out: Path, log) -> None:
    t0 = time.monotonic()
    pack(ref, out, lambda rootfs: _fill(base, rootfs), ["python3"],
         [f"PYTHONPATH={SITE}", "PYTHONUNBUFFERED=1", "PATH=/usr/local/bin:/usr/bin:/bin"])
    log(f"[images] built {ref} in {time.monotonic() - t0:.0f}s ({out.stat().st_size / 2**20:.0f} MiB)")


def _fill(base: Path, rootfs: Path) -> None:
    _run("tar", "-C", str(rootfs), "-xf", str(base))
    (rootfs / "usr/bin/python").symlink_to("python3")     # the chart runs `python -m ...`
    for name, line in zip(("passwd", "group"), USER_ENTRY):
        with open(rootfs / "etc" / name, "a") as f:
            f.write(line)
    site = rootfs / SITE.lstrip("/")
    site.mkdir(parents=True)
    skip = shutil.ignore_patterns("__pycache__")
    for entry in site_packages().iterdir():
        if not _excluded(entry.name) and not entry.name.startswith("stoker"):
            if entry.is_dir():
                shutil.copytree(entry.resolve(), site / entry.name, ignore=skip)
            else:
                shutil.copy2(entry.resolve(), site / entry.name)
    for src in STOKER_SOURCES:
        shutil.copytree(src, site / "stoker", dirs_exist_ok=True, ignore=skip)


if __name__ == "__main__":
    from stoker.devcluster.local import cache_dir
    print(*stoker_image(cache_dir() / "images"))
