"""Build tests/tools/promcheck (the alert-rule checker over Prometheus' own rule parser) once per
content + Go version into ~/.cache/stoker/bin/promcheck-<key>/ and print its path. `make tools`
runs this, so a fresh machine builds it before the tests (its first build downloads Prometheus'
module graph: minutes) instead of inside a test's timeout. Standard library only."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

PROMCHECK = Path(__file__).resolve().parent / "promcheck"


def promcheck_path() -> str:
    gov = subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True, check=True).stdout.strip()
    h = hashlib.sha256(gov.encode())
    for name in ("go.mod", "go.sum", "main.go"):
        h.update((PROMCHECK / name).read_bytes())
    cache = os.path.join(os.environ.get("STOKER_CACHE", os.path.expanduser("~/.cache/stoker")), "bin",
                         f"promcheck-{h.hexdigest()[:12]}")
    exe = os.path.join(cache, "promcheck")
    if not os.access(exe, os.X_OK):
        os.makedirs(cache, exist_ok=True)
        env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}
        out = subprocess.run(["go", "build", "-trimpath", "-ldflags=-s -w", "-o", exe + ".tmp", "."],
                             cwd=PROMCHECK, env=env, capture_output=True, text=True, timeout=3600)
        if out.returncode != 0:
            raise RuntimeError(f"building promcheck failed:\n{out.stderr[-3000:]}")
        os.replace(exe + ".tmp", exe)
    return exe


if __name__ == "__main__":
    try:
        print(promcheck_path())
    except RuntimeError as exc:
        sys.exit(str(exc))
