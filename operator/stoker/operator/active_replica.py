"""Which operator replica acts, shown on its pod so that heartbeats reach it.

With more than one replica, kopf peering lets only the replica with the highest live
priority act; the others pause. Workers stream heartbeats to the operator Service, and
a paused replica that received them would keep them from the one that decides whether a
rank is silent. So each replica reads the peering object every few seconds, works out
whether it is the one acting (``is_active``: kopf's rule) and labels its own pod
``stoker.dev/operator-active`` "true" or "false"; with peering the chart's Service selects
only "true". When the active replica dies, its peer entry expires after the peering
lifetime, the next replica resumes and labels itself, and workers reconnect to it
through the same Service (their streams retry with backoff)."""
from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Any

from stoker.common import labels as L

from .kube import KubeApi

log = logging.getLogger("stoker.operator.active_replica")


def _parse(ts: str) -> dt.datetime:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))


def is_active(peers: dict[str, dict[str, Any]], priority: int, now: dt.datetime) -> bool:
    """kopf's rule, from the peering object's status (peer id -> priority, lifetime,
    lastseen): a replica acts when it is live and no other live peer has its priority or
    a higher one. Before its own keep-alive is in the object it does not act."""
    live = [p for p in peers.values()
            if p.get("lastseen") and _parse(p["lastseen"]) + dt.timedelta(seconds=int(p.get("lifetime", 60))) > now]
    mine = [p for p in live if int(p.get("priority", 0)) == priority]
    return len(mine) == 1 and all(int(p.get("priority", 0)) < priority for p in live if p is not mine[0])


class ActiveLabel:
    """Keeps this replica's pod label in step with ``is_active`` (a daemon thread)."""

    def __init__(self, kube: KubeApi, *, peering: str, peering_namespace: str | None, priority: int,
                 pod: str, pod_namespace: str, interval_s: float = 2.0) -> None:
        self.kube, self.peering, self.peering_ns, self.priority = kube, peering, peering_namespace, priority
        self.pod, self.pod_ns, self.interval_s = pod, pod_namespace, interval_s
        self.active: bool | None = None
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="active-label", daemon=True)

    def start(self) -> "ActiveLabel":
        """One check now (a restarted replica's pod still carries the label of its last life:
        it says "false" before the pod reports ready), then one every ``interval_s``."""
        try:
            self.check()
        except Exception:  # noqa: BLE001
            log.exception("active_replica.check_failed")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop, and hand the label back ("false") so the Service drops this pod at once."""
        self._halt.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._set(False)

    def check(self) -> None:
        body = self.kube.get_peering(self.peering, self.peering_ns) or {}
        self._set(is_active(body.get("status") or {}, self.priority, dt.datetime.now(dt.timezone.utc)))

    def _set(self, active: bool) -> None:
        if active == self.active:
            return
        self.kube.label_pod(self.pod_ns, self.pod, {L.OPERATOR_ACTIVE: "true" if active else "false"})
        log.info("operator replica %s", "active" if active else "standing by", extra={"pod": self.pod})
        self.active = active

    def _run(self) -> None:
        while not self._halt.is_set():
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the API may be briefly unreachable: try again next time
                log.exception("active_replica.check_failed")
            self._halt.wait(self.interval_s)
