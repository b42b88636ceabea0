"""Small OCI images made here without a registry: files packed with umoci into an OCI
layout, cached by content hash, imported into a node's containerd with `ctr images import`."""
from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

BUSYBOX = Path("/bin/busybox")        # Debian's busybox-static


@dataclass(frozen=True)
class ImageSpec:
    name: str                             # stoker.local/<name>:<key>
    files: dict[str, Path]                # path in the image -> file here
    entrypoint: list[str]
    env: list[str] = field(default_factory=list)

    def key(self) -> str:
        h = hashlib.sha256(json.dumps([self.name, self.entrypoint, self.env]).encode())
        for dst in sorted(self.files):
            h.update(dst.encode())
            h.update(hashlib.sha256(Path(self.files[dst]).read_bytes()).digest())
        return h.hexdigest()[:12]

    def ref(self) -> str:
        return f"stoker.local/{self.name}:{self.key()}"


def pause_image() -> ImageSpec:
    """The pod sandbox: a static busybox that sleeps (containerd stops sandboxes with SIGKILL)."""
    return ImageSpec("pause", {"/bin/busybox": BUSYBOX}, ["/bin/busybox", "sleep", "2147483647"])


def busybox_image() -> ImageSpec:
    """A shell and small tools (httpd, wget, nc) for workloads that check the nodes."""
    return ImageSpec("busybox", {"/bin/busybox": BUSYBOX}, ["/bin/busybox", "sh"])


def coredns_image(coredns_bin: str) -> ImageSpec:
    return ImageSpec("coredns", {"/coredns": Path(coredns_bin)},
                     ["/coredns", "-conf", "/etc/coredns/Corefile"])


def _run(*argv: str) -> None:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")


def build(spec: ImageSpec, cache: Path, log=print) -> Path:
    """The image as an OCI archive in ``cache`` (built once per content key)."""
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / f"{spec.name}-{spec.key()}.tar"
    with open(cache / f".{spec.name}.lock", "w") as lock:     # one build per image at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.exists():
            return out
        t0 = time.monotonic()
        pack(spec.ref(), out, lambda rootfs: _copy_files(spec.files, rootfs), spec.entrypoint, spec.env)
        log(f"[images] built {spec.ref()} in {time.monotonic() - t0:.1f}s ({out.stat().st_size} bytes)")
    return out


def _copy_files(files: dict[str, Path], rootfs: Path) -> None:
    for dst, src in files.items():
        target = rootfs / dst.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def pack(ref: str, out: Path, fill: Callable[[Path], None], entrypoint: list[str],
         env: list[str] = (), user: str = "") -> None:
    """One-layer OCI image ``ref`` whose root filesystem ``fill(rootfs)`` writes, as the OCI
    archive ``out`` (umoci: init, new, unpack, fill, repack, config)."""
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        layout, bundle, tag = f"{tmp}/oci", f"{tmp}/bundle", "local"
        _run("umoci", "init", "--layout", layout)
        _run("umoci", "new", "--image", f"{layout}:{tag}")
        _run("umoci", "unpack", "--image", f"{layout}:{tag}", bundle)
        fill(Path(bundle) / "rootfs")
        _run("umoci", "repack", "--image", f"{layout}:{tag}", bundle)
        args = [a for e in entrypoint for a in ("--config.entrypoint", e)]
        args += [a for e in env for a in ("--config.env", e)]
        args += ["--config.user", user] if user else []
        _run("umoci", "config", "--image", f"{layout}:{tag}", *args)
        archive(Path(layout), ref, out)


def archive(layout: Path, ref: str, out: Path) -> None:
    """The OCI layout ``layout`` as the archive ``out``, named ``ref`` for containerd."""
    _name_index(layout / "index.json", ref)
    _run("tar", "-C", str(layout), "-cf", f"{out}.tmp", ".")
    Path(f"{out}.tmp").replace(out)


def _name_index(index_json: Path, ref: str) -> None:
    """containerd names an imported OCI image after this annotation."""
    index = json.loads(index_json.read_text())
    for m in index["manifests"]:
        m.setdefault("annotations", {})["io.containerd.image.name"] = ref
    index_json.write_text(json.dumps(index))


def import_image(archive: Path, containerd_sock: Path) -> None:
    _run("ctr", "--address", str(containerd_sock), "--namespace", "k8s.io",
         "images", "import", str(archive))
