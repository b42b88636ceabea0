"""PR_SET_PDEATHSIG: the kernel sends a child a signal when its parent dies (the thread that
forked it, in fact: fork from the main thread). Linux only; a no-op elsewhere. Torch-free
and stdlib-only (the launcher's bundle copies it)."""
from __future__ import annotations

import ctypes
import sys

PR_SET_PDEATHSIG = 1


def _resolve():
    """libc's prctl, looked up once in the parent: a preexec_fn runs between fork and exec,
    where loading a library could deadlock on a lock another thread held at the fork."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _resolve()


def die_with_parent(sig: int) -> bool:
    """Ask for ``sig`` when the parent dies (call it in the child: its own start, or a
    preexec_fn); False where the kernel cannot."""
    return _PRCTL is not None and _PRCTL(PR_SET_PDEATHSIG, int(sig)) == 0
