"""Leave a finished torchrun worker without C++ static destructors.

torch's gloo backend can hold a joinable ``std::thread`` in an object destroyed at
interpreter teardown; destroying it aborts the process ("terminate called without an
active exception", SIGABRT), even after ``destroy_process_group()``. torchrun then
reports the rank as failed and tears the whole job down: a finished training, or a
checkpoint test that already passed, turns into a failure. Seen about one run in ten on
2 CPU cores with pipeline schedules (2026-11) and in a resharding test (CI, 2026-12-04).

    from stoker.worker.sdk import exit_process
    ...
    dist.destroy_process_group()
    exit_process(0)

Call it last: it flushes stdout, stderr and logging, then ``os._exit``s, so ``atexit``
handlers and ``finally`` blocks above the call do not run.
"""
from __future__ import annotations

import logging
import os
import sys


def exit_process(code: int = 0) -> None:
    """Flush what this process printed and logged, then leave with ``code`` at once."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    os._exit(code)
