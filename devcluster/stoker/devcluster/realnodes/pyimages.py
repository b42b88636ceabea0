"""Python images built here without a registry: a Debian base made by mmdebstrap from
Debian packages (python3), plus the Python packages of the environment running this code
(torch included, its CUDA libraries left out: ``import torch`` works without them and
gloo needs none) and the stoker sources. Cached by content hash like the Go tools.

``torch_image`` is a user's own image (bring your own image): Debian's python3 with torch
and what torch requires, in the interpreter's own dist-packages; no stoker, no gRPC, no S3
client.

This stands in for ``docker build -f worker/Dockerfile`` (the operator's image is built from
its own Dockerfile: dockerbuild.py): that Dockerfile installs torch with its CUDA wheels from
PyPI (several GB per build); the image holds the same packages as the dev environment instead."""
from __future__ import annotations

import fcntl
import hashlib
import re
import shutil
import time
from pathlib import Path
from typing import Callable

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
TORCH_SITE = "/usr/local/lib/python3.11/dist-packages"    # on Debian python3's own sys.path
RECIPE = 4          # bump when _fill changes what goes into the image
# The user the chart runs as (uid 10001), as operator/Dockerfile and worker/Dockerfile add it:
# kopf asks for the user's name (getpass.getuser) at start-up and fails without an entry.
USER_ENTRY = ("stoker:x:10001:10001::/tmp:/usr/sbin/nologin\n", "stoker:x:10001:\n")


def _excluded(name: str) -> bool:
    return any(name == e or name.startswith(e + "_") or name.startswith(e + "-") for e in EXCLUDE)


def site_packages() -> Path:
    """The site-packages that holds torch (in a worktree venv it is the shared one)."""
    import importlib.util
    return Path(importlib.util.find_spec("torch").origin).parents[1]


def base_rootfs(cache: Path, log=print, packages: list[str] = BASE_PACKAGES, name: str = "debian-python") -> Path:
    """Debian minbase + ``packages``, as a tarball (mmdebstrap; ~2.5 min the first time)."""
    key = hashlib.sha256(f"{SUITE} {MIRROR} {packages}".encode()).hexdigest()[:12]
    out = cache / f"{name}-{key}.tar"
    if not out.exists():
        t0 = time.monotonic()
        tmp = out.with_suffix(".tmp.tar")       # mmdebstrap picks the format by the extension
        _run("mmdebstrap", "--variant=minbase", f"--include={','.join(packages)}", "--quiet",
             SUITE, str(tmp), MIRROR)
        tmp.replace(out)
        log(f"[images] Debian base {out.name} in {time.monotonic() - t0:.0f}s")
    return out


def _keep_all(name: str) -> bool:
    return not _excluded(name) and not name.startswith("stoker")


def torch_closure() -> set[str]:
    """The site-packages entries of torch and of what it requires, transitively (the
    CUDA and triton packages left out as everywhere here)."""
    from importlib import metadata
    seen: set[str] = set()
    todo, tops = ["torch"], set()
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen or _excluded(key):
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:       # a requirement whose marker excludes this platform
            continue
        tops.update(f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__"))
        todo += [re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0] for r in dist.requires or [] if "extra ==" not in r]
    return tops


def content_key(base: Path, keep: Callable[[str], bool], site: str, sources: list[Path]) -> str:
    h = hashlib.sha256(f"{base.name} {RECIPE} {EXCLUDE} {site}".encode())
    for entry in sorted(site_packages().iterdir()):
        if entry.name.endswith(".dist-info") and keep(entry.name):
            h.update(entry.name.encode())
    for src in sources:
        for f in sorted(src.rglob("*.py")):
            h.update(str(f.relative_to(src)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def stoker_image(cache: Path, log=print) -> tuple[str, Path]:
    """(image ref, OCI archive) of Python 3.11 + torch (CPU) + stoker, built once per content."""
    return _image(cache, "stoker-python", _keep_all, SITE, STOKER_SOURCES, log)


def torch_image(cache: Path, log=print) -> tuple[str, Path]:
    """(image ref, OCI archive) of Debian's Python 3.11 + torch and its requirements only."""
    closure = torch_closure()
    return _image(cache, "python-torch", lambda name: name in closure, TORCH_SITE, [], log)


def _image(cache: Path, name: str, keep: Callable[[str], bool], site: str, sources: list[Path],
           log) -> tuple[str, Path]:
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        base = base_rootfs(cache, log)
        key = content_key(base, keep, site, sources)
        ref, out = f"stoker.local/{name}:{key}", cache / f"{name}-{key}.tar"
        if not out.exists():
            t0 = time.monotonic()
            ours = site == SITE     # the stoker image runs as the chart's uid, as the Dockerfiles say (USER)
            env = [f"PYTHONPATH={site}"] if ours else []
            pack(ref, out, lambda rootfs: _fill(base, rootfs, keep, site, sources), ["python3"],
                 [*env, "PYTHONUNBUFFERED=1", "PATH=/usr/local/bin:/usr/bin:/bin"], user="10001:10001" if ours else "")
            log(f"[images] built {ref} in {time.monotonic() - t0:.0f}s ({out.stat().st_size / 2**20:.0f} MiB)")
    return ref, out


def _fill(base: Path, rootfs: Path, keep: Callable[[str], bool], site: str, sources: list[Path]) -> None:
    _run("tar", "-C", str(rootfs), "-xf", str(base))
    (rootfs / "usr/bin/python").symlink_to("python3")     # the chart runs `python -m ...`
    for name, line in zip(("passwd", "group"), USER_ENTRY):
        with open(rootfs / "etc" / name, "a") as f:
            f.write(line)
    target = rootfs / site.lstrip("/")
    target.mkdir(parents=True, exist_ok=True)
    skip = shutil.ignore_patterns("__pycache__")
    for entry in site_packages().iterdir():
        if keep(entry.name):
            if entry.is_dir():
                shutil.copytree(entry.resolve(), target / entry.name, ignore=skip)
            else:
                shutil.copy2(entry.resolve(), target / entry.name)
    for src in sources:
        shutil.copytree(src, target / "stoker", dirs_exist_ok=True, ignore=skip)


if __name__ == "__main__":
    from stoker.devcluster.local import cache_dir
    print(*stoker_image(cache_dir() / "images"))
