"""Builds ``shim/stokerdns.c`` (cluster DNS for C/C++ code via LD_PRELOAD) once
per machine into the shared ipam directory, keyed by the source's hash. Without
a C compiler the agent goes on with the Python-only shim."""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess

from .ipam import ipam_dir

log = logging.getLogger("nodeagent.preload")
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shim", "stokerdns.c")


def build(directory: str | None = None) -> str | None:
    directory = directory or ipam_dir()
    with open(SOURCE, "rb") as f:
        key = hashlib.sha256(f.read()).hexdigest()[:12]
    out = os.path.join(directory, f"libstokerdns-{key}.so")
    if os.path.exists(out):
        return out
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        log.warning("no C compiler: cluster DNS names work for Python code only")
        return None
    os.makedirs(directory, exist_ok=True)
    tmp = f"{out}.{os.getpid()}.tmp"
    r = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", tmp, SOURCE, "-ldl"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        log.warning("building the DNS preload library failed: cluster DNS names work for Python code only",
                    extra={"stderr": r.stderr[-2000:]})
        return None
    os.replace(tmp, out)
    return out
