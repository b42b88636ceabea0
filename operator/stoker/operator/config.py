"""Operator configuration: every setting declared once, as a field of ``Config``.

Each field carries its default, help text, command-line flag and environment
variable (``STOKER_OPERATOR_<FIELD>``), and where the Helm chart sets it. From
that one declaration come the ``stoker operator run`` flags (``add_arguments`` /
``from_args``), the environment loader (``load``) and its inverse (``to_env``);
``tests/helm_tests/test_chart_settings.py`` checks charts/stoker against it.
``python -m stoker.operator.main`` reads the environment, ``stoker operator run``
the flags; both hand the resulting ``Config`` to ``main.run``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any, Mapping

PREFIX = "STOKER_OPERATOR_"
COMPUTED = "computed"   # Setting.chart: the chart sets it from other values (see templates/deployment.yaml)


@dataclasses.dataclass(frozen=True)
class Setting:
    """What one Config field declares (``dataclasses.field(metadata={"setting": ...})``)."""

    help: str
    flag: str | None = ""            # "": --<field-with-dashes>; None: environment only
    chart: str | None = None         # values.yaml key (dotted) the chart passes; COMPUTED; None: not in the chart
    chart_default: Any = None        # the chart's default when it differs from the operator's (and why, in help)
    choices: tuple[str, ...] = ()
    short: str = ""                  # e.g. -n
    fallback_env: str = ""           # read when the STOKER_OPERATOR_ variable is unset (KUBECONFIG)


def setting(default: Any, help: str, *, secret: bool = False, **kw: Any) -> Any:
    """A Config field; ``secret``: left out of the Config's repr (and so of any log of it)."""
    return dataclasses.field(default=default, repr=not secret, metadata={"setting": Setting(help, **kw)})


@dataclasses.dataclass(frozen=True)
class Config:
    namespaces: tuple[str, ...] = setting(
        (), "watch only this namespace (repeatable); default: every namespace", flag="--namespace", short="-n",
        chart=COMPUTED)
    kubeconfig: str | None = setting(None, "kubeconfig file (default: in-cluster config, then $KUBECONFIG)",
                                     fallback_env="KUBECONFIG")
    metrics_port: int = setting(9090, "Prometheus endpoint; 0 disables", chart="ports.metrics")
    health_port: int = setting(0, "liveness endpoint /healthz; 0 disables (the chart turns it on for its probes)",
                               chart="ports.health", chart_default=8080)
    rendezvous_port: int = setting(29400, "port of the c10d rendezvous the operator hosts (locked per job: a "
                                   "gateway to one store per job, when the heartbeat service is on); 0: host none",
                                   chart="ports.rendezvous")
    rendezvous_store: str = setting(
        "local", "local: this operator hosts the rendezvous on --rendezvous-port; separate: a store Deployment "
        "(python -m stoker.operator.rdzv_gateway) does, at the advertise address and that port (the chart's "
        "default)", choices=("local", "separate"), chart=COMPUTED)
    rendezvous_key: str | None = setting(
        None, "install-wide secret (32+ characters) each job's token is derived from (HMAC), so the separate store "
        "checks tokens without reading Secrets; the chart sets it from its rendezvous-key Secret",
        flag=None, chart=COMPUTED, secret=True)
    rendezvous_advertise_address: str = setting(
        "127.0.0.1", "IP literal workers use to reach the store (in a cluster: the operator Service's ClusterIP)",
        chart=COMPUTED)
    resync_seconds: float = setting(10.0, "re-check every job this often (deadlines, TTL, backoff)",
                                    chart="operator.resyncSeconds")
    resync_fresh_seconds: float = setting(
        60.0, "a resync pass reads the job and its pods from the API server, not from the watches, when they were "
        "last read directly longer ago than this (a missed watch event is repaired within it); 0: every resync",
        flag="--resync-fresh")
    status_heartbeat_interval_seconds: float = setting(
        5.0, "write heartbeat-refreshed status (status.metrics, status.workerHeartbeats) at most this often per "
        "job; phase, conditions, failures and checkpoints are written at once (0: on every pass that changes them)",
        flag="--status-heartbeat-interval")
    pod_event_delay_seconds: float = setting(0.25, "pod events within this window fold into one pass", flag=None)
    last_call_timeout_seconds: int = setting(2, "seconds a rendezvous round waits for more than minReplicas workers",
                                             flag="--last-call-timeout", chart="operator.lastCallTimeoutSeconds")
    torchrun_max_restarts: int = setting(10, "in-place restarts per torchrun agent (each scale-down costs one)",
                                         chart="operator.torchrunMaxRestarts")
    peering: str | None = setting(
        None, "kopf peering object: replicas with the same NAME never act together (default: standalone)",
        chart=COMPUTED)
    peering_priority: int = setting(0, "the highest live priority acts, the others wait (0: a random priority)")
    peering_lifetime_seconds: int = setting(60, "seconds after which a silent peer is considered gone",
                                            flag="--peering-lifetime")
    pod_name: str | None = setting(
        None, "this operator's pod (downward API): with peering, the replica that acts labels its pod "
        "stoker.dev/operator-active=true, and the Service sends heartbeats only there", flag=None, chart=COMPUTED)
    pod_namespace: str | None = setting(None, "the namespace of --pod-name's pod (downward API)", flag=None,
                                        chart=COMPUTED)
    s3_endpoint: str | None = setting(None, "AWS_ENDPOINT_URL_S3 for workers whose Secret has none",
                                      chart="operator.s3Endpoint")
    heartbeat_address: str | None = setting(
        None, "host:port of the heartbeat service given to workers, an IP literal (unset: no heartbeat service)",
        chart=COMPUTED)
    heartbeat_listen: str | None = setting(
        None, "where the heartbeat service binds (default 0.0.0.0:<port of --heartbeat-address>)")
    heartbeat_interval_seconds: float = setting(1.0, "seconds between a worker's heartbeats",
                                                flag="--heartbeat-interval", chart="operator.heartbeatIntervalSeconds")
    startup_timeout_seconds: int = setting(
        600, "seconds an incarnation may take to its first step before it counts as hung", flag="--startup-timeout",
        chart="operator.startupTimeoutSeconds")
    max_infra_restarts: int = setting(
        50, "infrastructure restarts (which never spend maxRestarts) before a job fails anyway",
        chart="operator.maxInfraRestarts")
    node_report_after: int = setting(2, "job failures on one node within an hour before it is reported (Event, metric)",
                                     chart="operator.nodeReportAfter")
    cordon_after: int = setting(0, "job failures on one node within an hour before it is cordoned (0: never)",
                                chart="operator.cordonAfter")
    launcher: str = setting(
        "stoker", "stoker: torchrun that exits with the failing worker's exit code (needs the stoker package in the "
        "image); torchrun: plain torchrun", choices=("stoker", "torchrun"), chart="operator.launcher")
    launcher_image: str = setting(
        "", "image (with the stoker package) an init container copies the launcher from into each worker pod, so "
        "worker images need only Python and torch; empty: the launcher must be in the worker image (the chart: "
        "the operator's own image)", chart="operator.launcherImage")
    max_workers: int = setting(16, "concurrent handler threads in kopf", chart="operator.maxWorkers")
    log_level: str = setting("INFO", "DEBUG, INFO, WARNING or ERROR", chart="operator.logLevel")
    kueue: str = setting(
        "off", "on: watch the Kueue Workloads of queued jobs (spec.scheduling.queueName) so an admission or an "
        "eviction is acted on at once (needs Kueue's CRDs; the chart's kueue.enabled grants the RBAC); off: the "
        "resync timer notices them", choices=("off", "on"), chart=COMPUTED)

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


def settings() -> list[tuple[dataclasses.Field, Setting]]:
    return [(f, f.metadata["setting"]) for f in dataclasses.fields(Config)]


def env_name(f: dataclasses.Field) -> str:
    return PREFIX + f.name.upper()


def env_for(name: str) -> str:
    """The environment variable of the setting named ``name`` (a Config field)."""
    return env_name(next(f for f in dataclasses.fields(Config) if f.name == name))


def flag_of(f: dataclasses.Field, s: Setting) -> str | None:
    return None if s.flag is None else (s.flag or "--" + f.name.replace("_", "-"))


def _kind(f: dataclasses.Field) -> str:
    return str(f.type).split(" |")[0]   # "int", "float", "str", "tuple[str, ...]"


def _parse(f: dataclasses.Field, raw: str, where: str) -> Any:
    kind = _kind(f)
    if kind.startswith("tuple"):
        return tuple(x for x in raw.split(",") if x)
    if kind in ("int", "float"):
        try:
            return int(raw) if kind == "int" else float(raw)
        except ValueError:
            raise ValueError(f"{where}={raw!r} is not {'an integer' if kind == 'int' else 'a number'}") from None
    return raw


def _format(v: Any) -> str:
    if isinstance(v, tuple):
        return ",".join(v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def load(env: Mapping[str, str] | None = None) -> Config:
    """Config from STOKER_OPERATOR_* variables; an unset or empty one keeps the default."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f, s in settings():
        raw = env.get(env_name(f)) or (env.get(s.fallback_env) if s.fallback_env else None)
        if raw:
            values[f.name] = _parse(f, raw, env_name(f))
    return Config(**values)


def to_env(cfg: Config) -> dict[str, str]:
    """The inverse of load(); unset optional settings are left out."""
    out = {}
    for f, _ in settings():
        v = getattr(cfg, f.name)
        if v is not None and not (v == "" and f.default is None):
            out[env_name(f)] = _format(v)
    return out


def add_arguments(parser: argparse.ArgumentParser, into: Mapping[str, Any] | None = None) -> None:
    """One flag per setting that has one; ``into`` puts a setting's flag into a group."""
    d = Config()
    for f, s in settings():
        flag = flag_of(f, s)
        if flag is None:
            continue
        target = (into or {}).get(f.name, parser)
        names = [flag, s.short] if s.short else [flag]
        kw: dict[str, Any] = {"dest": f.name, "help": s.help}
        if _kind(f).startswith("tuple"):
            kw.update(action="append", default=[], metavar="NS")
        else:
            kw.update(default=getattr(d, f.name), type={"int": int, "float": float}.get(_kind(f), str))
            if s.choices:
                kw["choices"] = list(s.choices)
        target.add_argument(*names, **kw)


def from_args(args: argparse.Namespace) -> Config:
    """Config from parsed flags; settings without a flag keep their defaults."""
    values = {f.name: getattr(args, f.name) for f, s in settings() if flag_of(f, s) is not None}
    values["namespaces"] = tuple(values.get("namespaces") or ())
    return Config(**values)
