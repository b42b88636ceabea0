"""Fault drills the built-in trainer arms from its debug config (tests and benchmarks only)."""
from __future__ import annotations

import logging
import signal
import time

log = logging.getLogger("stoker.worker.trainer")


class StuckCollective:
    """``debug.stuck_collective_on_signal``: after SIGUSR1 this rank enters its next collective and
    never leaves it, as if its traffic never arrived. Every other rank then waits in that collective
    too, all of them alive and heartbeating: the stuck collective the operator must tell apart
    from a slow step (docs/recovery.md). Sent at a random moment by bench/bench_recovery.py."""

    def __init__(self, enabled: bool) -> None:
        self.armed = False
        if enabled:
            signal.signal(signal.SIGUSR1, self._arm)

    def _arm(self, *_: object) -> None:
        self.armed = True

    def block_if_armed(self, step: int) -> None:
        if not self.armed:
            return
        log.warning("trainer.stuck_collective step=%d (debug.stuck_collective_on_signal): never leaving it", step)
        while True:
            time.sleep(3600)
