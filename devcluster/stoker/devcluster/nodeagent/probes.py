"""readinessProbe support (exec, tcpSocket, httpGet), run inline by the agent's
reconcile loop with the probe's timeout. Liveness/startup probes are not
implemented. A container without a readinessProbe is ready while running."""
from __future__ import annotations

import socket
import subprocess
import urllib.request


def _port(container: dict, port) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"named port {port!r} not found in container ports")


def run_probe(probe: dict, container: dict, pod_ip: str) -> bool:
    timeout = float(probe.get("timeoutSeconds") or 1)
    try:
        if "exec" in probe:
            r = subprocess.run(probe["exec"].get("command") or ["false"], timeout=timeout,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return r.returncode == 0
        if "tcpSocket" in probe:
            t = probe["tcpSocket"]
            with socket.create_connection((t.get("host") or pod_ip, _port(container, t["port"])), timeout=timeout):
                return True
        if "httpGet" in probe:
            h = probe["httpGet"]
            scheme = (h.get("scheme") or "HTTP").lower()
            url = f"{scheme}://{h.get('host') or pod_ip}:{_port(container, h['port'])}{h.get('path') or '/'}"
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return 200 <= resp.status < 400
    except Exception:  # noqa: BLE001 - any failure is "not ready"
        return False
    return False


class Prober:
    def __init__(self) -> None:
        self._ready: dict[str, bool] = {}
        self._next: dict[str, float] = {}
        self._streak: dict[str, int] = {}

    def ready(self, name: str, container: dict) -> bool:
        if not container.get("readinessProbe"):
            return True
        return self._ready.get(name, False)

    def forget(self, name: str) -> None:
        self._ready.pop(name, None)
        self._next.pop(name, None)
        self._streak.pop(name, None)

    def maybe_probe(self, name: str, container: dict, pod_ip: str, now: float, started: float) -> None:
        probe = container.get("readinessProbe")
        if not probe:
            return
        due = self._next.get(name, started + float(probe.get("initialDelaySeconds") or 0))
        if now < due:
            return
        self._next[name] = now + float(probe.get("periodSeconds") or 10)
        ok = run_probe(probe, container, pod_ip)
        # streak > 0 counts successes, < 0 failures
        s = self._streak.get(name, 0)
        s = (s + 1 if s > 0 else 1) if ok else (s - 1 if s < 0 else -1)
        self._streak[name] = s
        if ok and s >= int(probe.get("successThreshold") or 1):
            self._ready[name] = True
        elif not ok and -s >= int(probe.get("failureThreshold") or 3):
            self._ready[name] = False
