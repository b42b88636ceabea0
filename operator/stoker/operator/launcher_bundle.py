"""The launcher for worker images that lack the stoker package (bring your own image).

With ``launcherImage`` set (the chart sets it to the operator's own image), each worker
pod gets an init container from that image that runs ``python -m
stoker.operator.launcher_bundle /stoker-launcher``: it copies the launcher
(``stoker.operator.launch``) and the torch-free pieces it imports into the pod's
emptyDir, with an entry script. The trainer container then runs
``python /stoker-launcher/stoker_launch.py <torchrun flags> <user command>``: Python puts
the script's folder first on ``sys.path`` of that one process, so the launcher imports
the copied modules, and the trainers it starts see the image's own packages only (no
PYTHONPATH is set). The worker image needs Python and torch, nothing of Stoker; the SDK
stays optional.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

MOUNT = "/stoker-launcher"
VOLUME = "stoker-launcher"
CONTAINER = "stoker-launcher"
ENTRY = "stoker_launch.py"
# What `stoker.operator.launch` imports (stdlib and torch besides); tests check the copy alone runs.
MODULES = ("stoker/common/__init__.py", "stoker/common/env.py", "stoker/common/auth.py",
           "stoker/common/last_step.py", "stoker/common/parent_death.py", "stoker/common/rdzv_lock.py",
           "stoker/operator/__init__.py", "stoker/operator/launch.py",
           "stoker/operator/launch_inplace.py", "stoker/operator/launch_spare.py", "stoker/operator/launch_warm.py",
           # the heartbeat contract, for the in-place restarts' reports (launch_inplace.Reporter): it needs grpcio
           # and protobuf in the image; without them (or too old) the launcher turns in-place restarts off
           "stoker/common/proto/__init__.py", "stoker/common/proto/stoker_pb2.py",
           "stoker/common/proto/stoker_pb2_grpc.py")
ENTRY_SOURCE = '''"""Runs stoker.operator.launch from the files beside this script (copied by the
operator's init container): sys.path[0] is this folder for this process only."""
import runpy

runpy.run_module("stoker.operator.launch", run_name="__main__", alter_sys=True)
'''


def _find(rel: str) -> Path:
    for entry in sys.path:
        p = Path(entry or ".") / rel
        if p.is_file():
            return p
    raise FileNotFoundError(f"{rel} is not on sys.path: is the stoker package installed in this image?")


def copy_to(dest: Path) -> list[Path]:
    """Copy the launcher's modules and the entry script into ``dest``."""
    out = []
    for rel in MODULES:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_find(rel), target)
        out.append(target)
    entry = dest / ENTRY
    entry.write_text(ENTRY_SOURCE)
    out.append(entry)
    for p in out:
        os.chmod(p, 0o444)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(f"usage: python -m stoker.operator.launcher_bundle <folder> (e.g. {MOUNT})", file=sys.stderr)
        return 2
    files = copy_to(Path(args[0]))
    print(f"stoker launcher: {len(files)} files in {args[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
