"""Kopf wiring only: handlers and startup settings, built from one ``Config``. Every
decision lives in plain modules (reconcile, policies, pods); the shell is
controller.Controller.

Run with `stoker operator run …` (flags) or `python -m stoker.operator.main`
(STOKER_OPERATOR_* environment variables); see config.py. Nothing is read at import:
``run(cfg)`` builds a kopf registry for ``cfg`` and hands the operator-wide state
down through kopf's ``memo`` (``memo.config``, ``memo.controller``, ...).
"""
from __future__ import annotations

import dataclasses
import logging
import random
import sys

import kopf

from stoker.common import labels as L

from . import logs, metrics
from .active_replica import ActiveLabel
from .config import Config, load
from .controller import Controller
from .detection import Timeouts
from .heartbeat_checks import frozen_after, node_quiet_after
from .heartbeats import OperatorHeartbeats
from .kube import Kube, authorization_header
from .pods import RenderConfig
from .recovery import NodeHealth
from .recovery_shell import RecoveryShell
from .rdzv_gateway import Gateway
from .rendezvous import StoreProcess, endpoint
from .supervision import Settings
from .watch_cache import WatchCache

log = logging.getLogger("stoker.operator")


def login(memo: kopf.Memo, **kwargs: object) -> kopf.ConnectionInfo | None:
    """kopf and the controller's client use the same kubeconfig (or in-cluster config)."""
    cfg_file = memo.config.kubeconfig
    if not cfg_file:
        return kopf.login_via_client(memo=memo, **kwargs)
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=cfg_file, client_configuration=cfg)
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
        token=(authorization_header(cfg) or "").removeprefix("Bearer ") or None,
        scheme="Bearer" if authorization_header(cfg) else None,
    )


def operator_settings(cfg: Config) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # The status schema is strict: kopf's own bookkeeping goes to annotations.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=L.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=L.GROUP)
    settings.persistence.finalizer = f"{L.GROUP}/operator"
    settings.posting.enabled = False          # our Events come from the controller, on transitions only
    settings.execution.max_workers = cfg.max_workers
    settings.watching.connect_timeout = 10
    settings.watching.server_timeout = 300
    settings.watching.reconnect_backoff = 0.5
    settings.networking.request_timeout = 30
    settings.queueing.idle_timeout = 5.0
    settings.peering.standalone = cfg.peering is None
    if cfg.peering:
        settings.peering.name = cfg.peering
        settings.peering.mandatory = True
        settings.peering.clusterwide = cfg.clusterwide
        # Equal priorities would pause every replica: default to a random one.
        settings.peering.priority = cfg.peering_priority or random.randint(1, 1_000_000)
        settings.peering.lifetime = cfg.peering_lifetime_seconds
    return settings


def startup(memo: kopf.Memo, **_: object) -> None:
    """Operator-wide state, built once and kept in the memo (kopf's settings come from
    ``operator_settings``, given to kopf.run)."""
    cfg: Config = memo.config
    kube = Kube(cfg.kubeconfig)
    if cfg.peering:
        kube.ensure_peering(cfg.peering, list(cfg.namespaces))
        if cfg.pod_name and cfg.pod_namespace:
            memo.active_label = ActiveLabel(
                kube, peering=cfg.peering, peering_namespace=cfg.namespaces[0] if cfg.namespaces else None,
                priority=memo.peering_priority, pod=cfg.pod_name, pod_namespace=cfg.pod_namespace).start()
    heartbeats = None
    if cfg.heartbeat_address:
        listen = cfg.heartbeat_listen or f"0.0.0.0:{cfg.heartbeat_address.rsplit(':', 1)[-1]}"
        beat = Timeouts(interval_s=cfg.heartbeat_interval_seconds)
        heartbeats = OperatorHeartbeats(
            kube, listen, on_change=lambda ns, n: memo.controller.trigger_soon(ns, n, cfg.pod_event_delay_seconds),
            key=cfg.rendezvous_key, frozen_after_s=frozen_after(beat), node_quiet_after_s=node_quiet_after(beat),
            collective_after_s=beat.collective_s)
        heartbeats.start()
        memo.heartbeats = heartbeats
    store_port = cfg.rendezvous_port
    locked = store_port > 0 and start_rendezvous(memo, cfg, heartbeats)
    metrics.serve(cfg.metrics_port)
    render = RenderConfig(
        rendezvous_endpoint=endpoint(cfg.rendezvous_advertise_address, store_port or 29400),
        rendezvous_locked=locked,
        operator_addr=cfg.heartbeat_address,
        last_call_timeout_s=cfg.last_call_timeout_seconds,
        torchrun_max_restarts=cfg.torchrun_max_restarts,
        s3_endpoint=cfg.s3_endpoint,
        launcher=cfg.launcher,
        launcher_image=cfg.launcher_image,
    )
    recovery = RecoveryShell(
        kube, heartbeats,
        settings=Settings(max_infra_restarts=cfg.max_infra_restarts,
                          startup_timeout_s=float(cfg.startup_timeout_seconds),
                          heartbeat_interval_s=cfg.heartbeat_interval_seconds),
        node_health=NodeHealth(report_after=cfg.node_report_after, cordon_after=cfg.cordon_after),
        heartbeat_interval_s=cfg.heartbeat_interval_seconds)
    memo.controller = Controller(kube, render, recovery=recovery, requeue_horizon_s=cfg.resync_seconds,
                                 status_heartbeat_interval_s=cfg.status_heartbeat_interval_seconds,
                                 cache=WatchCache(), pass_workers=cfg.max_workers,
                                 resync_fresh_s=cfg.resync_fresh_seconds)
    log.info("operator started", extra={"namespaces": ",".join(cfg.namespaces) or "*",
                                        "rendezvous": render.rendezvous_endpoint,
                                        "metrics_port": cfg.metrics_port, "peering": cfg.peering or "standalone"})


def start_rendezvous(memo: kopf.Memo, cfg: Config, heartbeats: OperatorHeartbeats | None) -> bool:
    """Host the rendezvous (or leave it to the separate store); True when it is locked (per-job
    stores behind the gateway, which needs the job tokens of the heartbeat service and
    Stoker's launcher in the pods; the separate store also needs the install key)."""
    locked = heartbeats is not None and cfg.launcher == "stoker"
    if cfg.rendezvous_store == "separate":
        if not (locked and cfg.rendezvous_key):
            log.warning("the separate rendezvous store is unlocked: it is locked when the heartbeat service is on, "
                        "--launcher is stoker and the install key is set (the chart does all three)")
        return locked and bool(cfg.rendezvous_key)
    if not locked:
        log.warning("the rendezvous store is shared and unlocked: any pod that reaches it can read or change "
                    "another job's rendezvous; it is locked when the heartbeat service is on "
                    "(--heartbeat-address) and --launcher is stoker")
    memo.store = StoreProcess(0 if locked else cfg.rendezvous_port, per_job=locked)
    memo.store.start()
    memo.store.watch()
    if locked:
        memo.gateway = Gateway(cfg.rendezvous_port, heartbeats.lookup, memo.store).start()
    return locked


def cleanup(memo: kopf.Memo, **_: object) -> None:
    active_label = memo.pop("active_label", None)
    if active_label is not None:
        active_label.stop()
    heartbeats = memo.pop("heartbeats", None)
    if heartbeats is not None:
        heartbeats.stop()
    for name in ("gateway", "store"):
        part = memo.pop(name, None)
        if part is not None:
            part.stop()


# The handlers are coroutines that only record and schedule: a pass runs on the controller's pass pool,
# never on kopf's handler threads, so kopf's per-object event queues (each event a whole object) drain
# at once instead of waiting behind passes (bench/scale_memory.py: most of the operator's memory per job).
async def on_job_event(type: str | None, name: str, namespace: str, meta: dict, event: dict, memo: kopf.Memo,
                       **_: object) -> None:
    ctl: Controller = memo.controller
    if ctl.cache is not None and event.get("object"):
        ctl.cache.job_event(type, event["object"])
    if type == "DELETED":
        metrics.observe_phase(namespace, name, None)
        ctl.forget(namespace, name)
        if memo.get("gateway") is not None:
            memo.gateway.forget(namespace, name)
        return
    if ctl.is_own_write(namespace, name, meta.get("resourceVersion")):
        return
    ctl.trigger_soon(namespace, name, 0.0)


async def on_pod_event(type: str | None, labels: dict, namespace: str, event: dict, memo: kopf.Memo,
                       **_: object) -> None:
    if memo.controller.cache is not None and event.get("object"):
        memo.controller.cache.pod_event(type, event["object"])
    memo.controller.trigger_soon(namespace, labels[L.JOB_NAME], memo.config.pod_event_delay_seconds)


async def on_workload_event(labels: dict, namespace: str, memo: kopf.Memo, **_: object) -> None:
    """A queued job's Kueue Workload changed (admitted, evicted, finished): a pass for its job."""
    memo.controller.trigger_soon(namespace, labels[L.JOB_NAME], memo.config.pod_event_delay_seconds)


async def resync(name: str, namespace: str, memo: kopf.Memo, **_: object) -> None:
    """Time-driven transitions (deadline, TTL, restart backoff) and a safety net: now and then this
    pass reads the job and its pods from the API server (Controller.resync)."""
    memo.controller.resync(namespace, name)


def registry(cfg: Config) -> kopf.OperatorRegistry:
    """The handlers, registered for ``cfg`` (the resync timer's interval comes from it)."""
    reg = kopf.OperatorRegistry()
    kopf.on.login(registry=reg)(login)
    kopf.on.startup(registry=reg)(startup)
    kopf.on.cleanup(registry=reg)(cleanup)
    kopf.on.event(L.GROUP, L.VERSION, L.PLURAL, registry=reg)(on_job_event)
    kopf.on.event("", "v1", "pods", labels={L.APP_MANAGED_BY: L.MANAGED_BY_VALUE, L.JOB_NAME: kopf.PRESENT},
                  registry=reg)(on_pod_event)
    if cfg.kueue == "on":
        kopf.on.event("kueue.x-k8s.io", "v1beta2", "workloads",
                      labels={L.APP_MANAGED_BY: L.MANAGED_BY_VALUE, L.JOB_NAME: kopf.PRESENT},
                      registry=reg)(on_workload_event)
    kopf.timer(L.GROUP, L.VERSION, L.PLURAL, interval=cfg.resync_seconds, initial_delay=cfg.resync_seconds,
               registry=reg)(resync)
    _timers_without_finalizers(reg)
    return reg


def _timers_without_finalizers(reg: kopf.OperatorRegistry) -> None:
    """kopf puts a finalizer on every object that has a timer, so that it can stop the
    timer before the object goes. We do not want that: a finalizer makes deleting a
    job (and its namespace) wait for a running operator. The timer only triggers a
    level-triggered pass, which is harmless to stop late: kopf stops it on the
    DELETED event. (kopf has no public switch for this; the registry entry is
    replaced with the same handler minus the finalizer requirement.)"""
    spawning = reg._spawning
    spawning._handlers[:] = [dataclasses.replace(h, requires_finalizer=False) for h in spawning._handlers]


def run(cfg: Config | None = None) -> int:
    cfg = cfg or load()
    logs.setup(cfg.log_level)
    settings = operator_settings(cfg)
    kopf.run(
        registry=registry(cfg),
        settings=settings,
        memo=kopf.Memo(config=cfg, peering_priority=settings.peering.priority),
        standalone=cfg.peering is None,
        peering_name=cfg.peering,
        namespaces=list(cfg.namespaces),
        clusterwide=cfg.clusterwide,
        liveness_endpoint=f"http://0.0.0.0:{cfg.health_port}/healthz" if cfg.health_port else None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(run())
