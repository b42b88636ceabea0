"""Kopf wiring only: decorators and startup settings. Every decision lives in
plain modules (reconcile, policies, pods); the shell is controller.Controller.

Run with `stoker operator run …` or `python -m stoker.operator.main` (settings
from STOKER_OPERATOR_* environment variables, see config.py).
"""
from __future__ import annotations

import logging
import random
import sys

import kopf

from stoker.common import labels as L

from . import logs, metrics
from .config import load
from .controller import Controller
from .kube import Kube, authorization_header
from .heartbeats import OperatorHeartbeats
from .pods import RenderConfig
from .recovery import NodeHealth
from .recovery_shell import RecoveryShell
from .supervision import Settings
from .rendezvous import NO_TORCH, StoreProcess, endpoint
from .rendezvous import torch_installed as rendezvous_torch_installed

CONFIG = load()
log = logging.getLogger("stoker.operator")
_state: dict[str, object] = {}


def _controller() -> Controller:
    return _state["controller"]  # type: ignore[return-value]


@kopf.on.login()
def login(**kwargs: object) -> kopf.ConnectionInfo | None:
    """kopf and the controller's client use the same kubeconfig (or in-cluster config)."""
    if not CONFIG.kubeconfig:
        return kopf.login_via_client(**kwargs)
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=CONFIG.kubeconfig, client_configuration=cfg)
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
        token=(authorization_header(cfg) or "").removeprefix("Bearer ") or None,
        scheme="Bearer" if authorization_header(cfg) else None,
    )


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_: object) -> None:
    # The status schema is strict: kopf's own bookkeeping goes to annotations.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=L.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=L.GROUP)
    settings.persistence.finalizer = f"{L.GROUP}/operator"
    settings.posting.enabled = False          # our Events come from the controller, on transitions only
    settings.execution.max_workers = CONFIG.max_workers
    settings.watching.connect_timeout = 10
    settings.watching.server_timeout = 300
    settings.watching.reconnect_backoff = 0.5
    settings.networking.request_timeout = 30
    settings.batching.idle_timeout = 5.0
    settings.batching.batch_window = 0.05
    settings.peering.standalone = CONFIG.peering is None
    if CONFIG.peering:
        settings.peering.name = CONFIG.peering
        settings.peering.mandatory = True
        settings.peering.clusterwide = CONFIG.clusterwide
        # Equal priorities would pause every replica: default to a random one.
        settings.peering.priority = CONFIG.peering_priority or random.randint(1, 1_000_000)
        settings.peering.lifetime = CONFIG.peering_lifetime_seconds

    store_port = CONFIG.rendezvous_port
    if store_port > 0:
        store = StoreProcess(store_port)
        store.start()
        store.watch()
        _state["store"] = store
    metrics.serve(CONFIG.metrics_port)
    render = RenderConfig(
        rendezvous_endpoint=endpoint(CONFIG.rendezvous_advertise_address, store_port or 29400),
        operator_addr=CONFIG.heartbeat_address,
        last_call_timeout_s=CONFIG.last_call_timeout_seconds,
        torchrun_max_restarts=CONFIG.torchrun_max_restarts,
        s3_endpoint=CONFIG.s3_endpoint,
        launcher=CONFIG.launcher,
    )
    kube = Kube(CONFIG.kubeconfig)
    if CONFIG.peering:
        kube.ensure_peering(CONFIG.peering, list(CONFIG.namespaces))
    heartbeats = None
    if CONFIG.heartbeat_address:
        listen = CONFIG.heartbeat_listen or f"0.0.0.0:{CONFIG.heartbeat_address.rsplit(':', 1)[-1]}"
        heartbeats = OperatorHeartbeats(
            kube, listen, on_change=lambda ns, n: _controller().trigger_soon(ns, n, CONFIG.pod_event_delay_seconds))
        heartbeats.start()
        _state["heartbeats"] = heartbeats
    recovery = RecoveryShell(
        kube, heartbeats,
        settings=Settings(max_infra_restarts=CONFIG.max_infra_restarts,
                          startup_timeout_s=float(CONFIG.startup_timeout_seconds),
                          heartbeat_interval_s=CONFIG.heartbeat_interval_seconds),
        node_health=NodeHealth(report_after=CONFIG.node_report_after, cordon_after=CONFIG.cordon_after),
        heartbeat_interval_s=CONFIG.heartbeat_interval_seconds)
    _state["controller"] = Controller(kube, render, recovery=recovery, requeue_horizon_s=CONFIG.resync_seconds)
    log.info("operator started", extra={"namespaces": ",".join(CONFIG.namespaces) or "*",
                                        "rendezvous": render.rendezvous_endpoint,
                                        "metrics_port": CONFIG.metrics_port, "peering": CONFIG.peering or "standalone"})


@kopf.on.cleanup()
def cleanup(**_: object) -> None:
    heartbeats = _state.pop("heartbeats", None)
    if heartbeats is not None:
        heartbeats.stop()  # type: ignore[attr-defined]
    store = _state.pop("store", None)
    if store is not None:
        store.stop()  # type: ignore[attr-defined]


@kopf.on.event(L.GROUP, L.VERSION, L.PLURAL)
def on_job_event(type: str | None, name: str, namespace: str, meta: dict, **_: object) -> None:
    ctl = _controller()
    if type == "DELETED":
        metrics.observe_phase(namespace, name, None)
        ctl.forget(namespace, name)
        return
    if ctl.is_own_write(namespace, name, meta.get("resourceVersion")):
        return
    ctl.trigger(namespace, name)


@kopf.on.event("", "v1", "pods", labels={L.APP_MANAGED_BY: L.MANAGED_BY_VALUE, L.JOB_NAME: kopf.PRESENT})
def on_pod_event(labels: dict, namespace: str, **_: object) -> None:
    _controller().trigger_soon(namespace, labels[L.JOB_NAME], CONFIG.pod_event_delay_seconds)


@kopf.timer(L.GROUP, L.VERSION, L.PLURAL, interval=CONFIG.resync_seconds, initial_delay=CONFIG.resync_seconds)
def resync(name: str, namespace: str, **_: object) -> None:
    """Time-driven transitions (deadline, TTL, restart backoff) and a safety net."""
    _controller().trigger(namespace, name)


def _timers_without_finalizers() -> None:
    """kopf puts a finalizer on every object that has a timer, so that it can stop the
    timer before the object goes. We do not want that: a finalizer makes deleting a
    job (and its namespace) wait for a running operator. The timer only triggers a
    level-triggered pass, which is harmless to stop late: kopf stops it on the
    DELETED event. (kopf has no public switch for this; the registry entry is
    replaced with the same handler minus the finalizer requirement.)"""
    import dataclasses

    reg = kopf.get_default_registry()._spawning
    reg._handlers[:] = [dataclasses.replace(h, requires_finalizer=False) for h in reg._handlers]


_timers_without_finalizers()


def run() -> int:
    logs.setup(CONFIG.log_level)
    if CONFIG.rendezvous_port > 0 and not rendezvous_torch_installed():
        log.error(NO_TORCH.format(port=CONFIG.rendezvous_port))
        return 1
    kopf.run(
        standalone=CONFIG.peering is None,
        peering_name=CONFIG.peering,
        namespaces=list(CONFIG.namespaces),
        clusterwide=CONFIG.clusterwide,
        liveness_endpoint=f"http://0.0.0.0:{CONFIG.health_port}/healthz" if CONFIG.health_port else None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(run())
