"""Images built from the repository's own Dockerfiles, here, without Docker or a registry:
``buildah bud`` (chroot isolation, vfs storage under the cache) runs the Dockerfile as it is,
with a Debian base made by mmdebstrap standing in for ``python:3.11-slim-bookworm``
(``--build-arg PYTHON_IMAGE``) and pip reaching PyPI as the host does (its pip.conf and CA
bundle mounted read-only into RUN steps). The result is pushed to an OCI layout, named for
containerd and tarred: cached by content hash (the Dockerfile, the sources it copies, the
base), like the Go tools.

Used for the operator (``operator/Dockerfile``: no torch, so PyPI serves all of it in
seconds). The worker's Dockerfile installs torch with its CUDA wheels from PyPI (several
GB), so the trainers' image stays pyimages.stoker_image (the same packages as the
environment that builds it)."""
from __future__ import annotations

import fcntl
import hashlib
import subprocess
import tempfile
import time
from pathlib import Path

from stoker.devcluster.realnodes import pyimages
from stoker.devcluster.realnodes.images import _run, archive

REPO = Path(__file__).resolve().parents[4]
# What python:3.11-slim-bookworm has that the Dockerfiles use: python (with venv), groupadd/useradd.
BASE_PACKAGES = ["python3", "python3-venv", "python-is-python3", "ca-certificates", "passwd"]
BASE_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What the Dockerfiles COPY (relative to the repository), hashed into the image's key.
CONTEXT = ["pyproject.toml", "README.md", "common", "operator/stoker", "worker/stoker"]
HOST_PIP = ["/etc/pip.conf", "/etc/ssl/certs/ca-certificates.crt"]
RECIPE = 1          # bump when how the image is built changes


def _buildah(cache: Path, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["buildah", "--root", str(cache / "buildah" / "root"), "--runroot", str(cache / "buildah" / "run"),
           "--storage-driver", "vfs", *argv]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{(r.stdout + r.stderr)[-4000:]}")
    return r


def base_image(cache: Path, log=print) -> str:
    """The stand-in for python:3.11-slim-bookworm in buildah's storage (mmdebstrap, cached)."""
    tar = pyimages.base_rootfs(cache, log, BASE_PACKAGES, "docker-base")
    key = hashlib.sha256(f"{tar.name} {BASE_PATH}".encode()).hexdigest()[:12]
    ref = f"localhost/stoker-docker-base:{key}"
    if _buildah(cache, "inspect", ref, check=False).returncode == 0:
        return ref
    t0 = time.monotonic()
    ctr = _buildah(cache, "from", "scratch").stdout.strip()
    mount = _buildah(cache, "mount", ctr).stdout.strip()
    _run("tar", "-C", mount, "-xf", str(tar))
    _buildah(cache, "config", "--env", BASE_PATH, "--cmd", "python3", ctr)
    _buildah(cache, "commit", "--rm", "-q", ctr, ref)
    log(f"[images] Docker base {ref} imported into buildah in {time.monotonic() - t0:.0f}s")
    return ref


def content_key(dockerfile: Path, base: str) -> str:
    h = hashlib.sha256(f"{RECIPE} {base}".encode())
    h.update(dockerfile.read_bytes())
    for entry in CONTEXT:
        path = REPO / entry
        for f in sorted([path] if path.is_file() else path.rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts:
                h.update(str(f.relative_to(REPO)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:12]


def dockerfile_image(cache: Path, dockerfile: str, name: str, log=print) -> tuple[str, Path]:
    """(image ref, OCI archive) of ``docker build -f <dockerfile> .`` at the repository root."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        base = base_image(cache, log)
        key = content_key(REPO / dockerfile, base)
        ref, out = f"stoker.local/{name}:{key}", cache / f"{name}-{key}.tar"
        if out.exists():
            return ref, out
        t0 = time.monotonic()
        mounts = [a for p in HOST_PIP if Path(p).exists() for a in ("-v", f"{p}:{p}:ro")]
        _buildah(cache, "bud", "--isolation", "chroot", "--layers=false", "-q", *mounts,
                 "--build-arg", f"PYTHON_IMAGE={base}", "-f", str(REPO / dockerfile), "-t", ref, str(REPO))
        built = time.monotonic() - t0
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            _buildah(cache, "push", ref, f"oci:{tmp}/oci:{ref}")
            archive(Path(tmp) / "oci", ref, out)
        _buildah(cache, "rmi", ref)
        log(f"[images] built {ref} from {dockerfile} in {built:.0f}s (+{time.monotonic() - t0 - built:.0f}s "
            f"to export; {out.stat().st_size / 2**20:.0f} MiB)")
    return ref, out


def operator_image(cache: Path, log=print) -> tuple[str, Path]:
    return dockerfile_image(cache, "operator/Dockerfile", "stoker-operator", log)


if __name__ == "__main__":
    from stoker.devcluster.local import cache_dir
    print(*operator_image(cache_dir() / "images"))
