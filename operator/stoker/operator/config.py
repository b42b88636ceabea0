"""Operator configuration: environment variables with one prefix (STOKER_OPERATOR_*).

`stoker operator run` turns its flags into these variables before it imports
`stoker.operator.main`, so `python -m stoker.operator.main` and the CLI read
the same settings.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping

PREFIX = "STOKER_OPERATOR_"


@dataclasses.dataclass(frozen=True)
class Config:
    namespaces: tuple[str, ...] = ()          # empty = all namespaces
    kubeconfig: str | None = None
    metrics_port: int = 9090                  # 0 disables the Prometheus endpoint
    health_port: int = 0                      # 0 disables kopf's liveness endpoint
    rendezvous_port: int = 29400              # 0: do not host a store (an external one is advertised)
    rendezvous_advertise_address: str = "127.0.0.1"
    resync_seconds: float = 10.0
    pod_event_delay_seconds: float = 0.25     # pod events within this window fold into one pass
    last_call_timeout_seconds: int = 2
    torchrun_max_restarts: int = 10
    peering: str | None = None                # None: standalone
    peering_priority: int = 0                 # 0: random; the highest live priority acts
    peering_lifetime_seconds: int = 60        # a silent peer counts as gone after this long
    s3_endpoint: str | None = None
    heartbeat_address: str | None = None      # host:port workers dial (an IP literal); None: no heartbeat service
    heartbeat_listen: str | None = None       # where the service binds; default 0.0.0.0:<port of heartbeat_address>
    heartbeat_interval_seconds: float = 5.0   # how often workers send a heartbeat
    startup_timeout_seconds: int = 600        # first step of an incarnation (restore, compile) may take this long
    max_infra_restarts: int = 50              # infrastructure restarts before a job fails anyway
    node_report_after: int = 2                # job failures on one node (per hour) before it is reported
    cordon_after: int = 0                     # ... before it is cordoned; 0: never cordon
    launcher: str = "stoker"                  # stoker (keeps worker exit codes) | torchrun
    max_workers: int = 16
    log_level: str = "INFO"

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(PREFIX + key)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{PREFIX}{key}={raw!r} is not an integer") from None


def load(env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    d = Config()
    ns = tuple(n for n in (env.get(PREFIX + "NAMESPACES") or "").split(",") if n)
    return Config(
        namespaces=ns,
        kubeconfig=env.get(PREFIX + "KUBECONFIG") or env.get("KUBECONFIG") or None,
        metrics_port=_int(env, "METRICS_PORT", d.metrics_port),
        health_port=_int(env, "HEALTH_PORT", d.health_port),
        rendezvous_port=_int(env, "RENDEZVOUS_PORT", d.rendezvous_port),
        rendezvous_advertise_address=env.get(PREFIX + "RENDEZVOUS_ADVERTISE_ADDRESS") or d.rendezvous_advertise_address,
        resync_seconds=float(env.get(PREFIX + "RESYNC_SECONDS") or d.resync_seconds),
        pod_event_delay_seconds=float(env.get(PREFIX + "POD_EVENT_DELAY_SECONDS") or d.pod_event_delay_seconds),
        last_call_timeout_seconds=_int(env, "LAST_CALL_TIMEOUT_SECONDS", d.last_call_timeout_seconds),
        torchrun_max_restarts=_int(env, "TORCHRUN_MAX_RESTARTS", d.torchrun_max_restarts),
        peering=env.get(PREFIX + "PEERING") or None,
        peering_priority=_int(env, "PEERING_PRIORITY", d.peering_priority),
        peering_lifetime_seconds=_int(env, "PEERING_LIFETIME_SECONDS", d.peering_lifetime_seconds),
        s3_endpoint=env.get(PREFIX + "S3_ENDPOINT") or None,
        heartbeat_address=env.get(PREFIX + "HEARTBEAT_ADDRESS") or None,
        heartbeat_listen=env.get(PREFIX + "HEARTBEAT_LISTEN") or None,
        heartbeat_interval_seconds=float(env.get(PREFIX + "HEARTBEAT_INTERVAL_SECONDS")
                                         or d.heartbeat_interval_seconds),
        startup_timeout_seconds=_int(env, "STARTUP_TIMEOUT_SECONDS", d.startup_timeout_seconds),
        max_infra_restarts=_int(env, "MAX_INFRA_RESTARTS", d.max_infra_restarts),
        node_report_after=_int(env, "NODE_REPORT_AFTER", d.node_report_after),
        cordon_after=_int(env, "CORDON_AFTER", d.cordon_after),
        launcher=env.get(PREFIX + "LAUNCHER") or d.launcher,
        max_workers=_int(env, "MAX_WORKERS", d.max_workers),
        log_level=env.get(PREFIX + "LOG_LEVEL") or d.log_level,
    )


def to_env(cfg: Config) -> dict[str, str]:
    """The inverse of load(): what the CLI exports for the operator process."""
    out = {
        "NAMESPACES": ",".join(cfg.namespaces),
        "METRICS_PORT": str(cfg.metrics_port),
        "HEALTH_PORT": str(cfg.health_port),
        "RENDEZVOUS_PORT": str(cfg.rendezvous_port),
        "RENDEZVOUS_ADVERTISE_ADDRESS": cfg.rendezvous_advertise_address,
        "RESYNC_SECONDS": f"{cfg.resync_seconds:g}",
        "POD_EVENT_DELAY_SECONDS": f"{cfg.pod_event_delay_seconds:g}",
        "LAST_CALL_TIMEOUT_SECONDS": str(cfg.last_call_timeout_seconds),
        "TORCHRUN_MAX_RESTARTS": str(cfg.torchrun_max_restarts),
        "LAUNCHER": cfg.launcher,
        "HEARTBEAT_INTERVAL_SECONDS": f"{cfg.heartbeat_interval_seconds:g}",
        "STARTUP_TIMEOUT_SECONDS": str(cfg.startup_timeout_seconds),
        "MAX_INFRA_RESTARTS": str(cfg.max_infra_restarts),
        "NODE_REPORT_AFTER": str(cfg.node_report_after),
        "CORDON_AFTER": str(cfg.cordon_after),
        "PEERING_PRIORITY": str(cfg.peering_priority),
        "PEERING_LIFETIME_SECONDS": str(cfg.peering_lifetime_seconds),
        "MAX_WORKERS": str(cfg.max_workers),
        "LOG_LEVEL": cfg.log_level,
    }
    for key, val in (("KUBECONFIG", cfg.kubeconfig), ("PEERING", cfg.peering), ("S3_ENDPOINT", cfg.s3_endpoint),
                     ("HEARTBEAT_ADDRESS", cfg.heartbeat_address), ("HEARTBEAT_LISTEN", cfg.heartbeat_listen)):
        if val:
            out[key] = val
    return {PREFIX + k: v for k, v in out.items()}
