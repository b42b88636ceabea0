"""The I/O shell around detection and recovery, used by controller.Controller.

Per pass it gathers ``supervision.Observed`` (raw pod facts, the nodes under the
pods, heartbeat progress per rank), and after the pure plan it carries out the
recovery side effects: token Secret before pods, anti-affinity and token env on
new pods, force-deletion of pods stuck on lost nodes, node-health bookkeeping
(metric, Event, optional cordon) and detection metrics.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable

from stoker.common import env as E

from . import detection as D
from . import metrics, node_exclusion
from . import recovery as R
from . import supervision as S
from .heartbeat_checks import quiet_nodes
from .heartbeats import OperatorHeartbeats, token_env
from .kube import KubeApi, KubeError
from .node_probe import NodeProbe
from .pods import job_labels, owner_reference
from .podview import PodView

log = logging.getLogger("stoker.operator.recovery")

NODES_TTL_S = 1.0


class RecoveryShell:
    def __init__(self, kube: KubeApi, heartbeats: OperatorHeartbeats | None = None, *,
                 settings: S.Settings | None = None, node_health: R.NodeHealth | None = None,
                 heartbeat_interval_s: float | None = None, watch_nodes: bool = True,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.heartbeats = heartbeats
        self.settings = settings or S.Settings()
        self.node_health = node_health or R.NodeHealth()
        self.probe = NodeProbe()  # the witness of the heartbeat node rule
        self.heartbeat_interval_s = heartbeat_interval_s
        self.mono = mono
        self._lock = threading.Lock()
        self._nodes: tuple[float, dict[str, D.NodeView], bool] = (-1e9, {}, False)
        self._nodes_forbidden = not watch_nodes  # without nodes, loss shows through pods and heartbeats
        self._listing = False
        self._drains_sent: dict[tuple[str, str], str] = {}  # (namespace, job) -> drain id asked for
        self._held: frozenset[str] = frozenset()  # found lost, still Ready: new pods kept off (node_exclusion)

    # ------------------------------------------------------------------ observe
    def nodes(self, need: Iterable[str] = ()) -> tuple[dict[str, D.NodeView], bool]:
        """All nodes (the list cached for a second); (views, listed). Without RBAC on
        nodes, node loss is seen only through the pods.

        ``need``: the nodes the caller's pods run on. One that the cached list lacks or
        shows lost is read again (a GET) before anything is concluded, every time: the
        pods were observed after the list was taken, so a node that registered a moment
        ago, or whose not-ready taint was just lifted (the scheduler placed a pod there),
        would otherwise read as deleted or lost. (CI: a replacement scheduled on a node
        that joined 0.3 s before was replaced again as NodeLost.)
        """
        with self._lock:
            at, views, listed = self._nodes
            fresh = self._nodes_forbidden or self.mono() - at < NODES_TTL_S
            # One LIST at a time: passes that find it under way use the list they have (at scale every
            # pass of a burst used to list all nodes at the same moment). The first one waits for it.
            lister = not fresh and (not self._listing or at < 0)
            if lister:
                self._listing = True
        if lister:
            try:
                views, listed = self._list_nodes()
            finally:
                with self._lock:
                    self._listing = False
        suspects = [n for n in need if listed and (n not in views or views[n].lost)]
        if suspects:
            views = dict(views)
            for name in suspects:
                self._reread(views, name)
        return views, listed

    def _list_nodes(self) -> tuple[dict[str, D.NodeView], bool]:
        try:
            views = {v.name: v for v in (D.node_view(n) for n in self.kube.list_nodes())}
            listed = True
        except KubeError as e:
            if e.status == 403:
                log.warning("cannot list nodes (RBAC): node loss is detected from pods and heartbeats only")
                self._nodes_forbidden = True
            views, listed = {}, False
        with self._lock:
            self._nodes = (self.mono(), views, listed)
        return views, listed

    def _reread(self, views: dict[str, D.NodeView], name: str) -> None:
        try:
            body = self.kube.get_node(name)
        except KubeError:
            return  # the list's word stands
        if body is None:
            views.pop(name, None)
        else:
            views[name] = D.node_view(body)

    def observe(self, namespace: str, name: str, pods: Iterable[PodView]) -> S.Observed:
        facts = tuple(pods)
        nodes, listed = self.nodes(need={f.node for f in facts if f.node})
        hb = self.heartbeats
        if hb is None:
            return S.Observed(facts=facts, nodes=nodes, nodes_listed=listed, mono_now=self.mono())
        # A replaced pod's last records and launcher beats (same pod name, the lost node) are not the
        # replacement's (an elastic job's replacement, a job's next spare).
        lost = self.lost_nodes(R.current_records(hb.ranks(namespace, name), facts), facts, nodes)
        return S.Observed(facts=facts, nodes=nodes, nodes_listed=listed,
                          ranks=tuple(R.current_records(hb.ranks(namespace, name), facts)),
                          workers=tuple(R.current_records(hb.workers(namespace, name), facts)),
                          mono_now=self.mono(), heartbeats=True, newest_heard=hb.newest_heard(), lost_nodes=lost,
                          reports=tuple(hb.reports(namespace, name)), held_lost=self.held_lost(nodes, lost),
                          launchers=tuple(R.current_records(hb.launchers(namespace, name), facts)))

    def held_lost(self, nodes: dict[str, D.NodeView], found: frozenset[str] = frozenset()) -> frozenset[str]:
        """Nodes found lost (``lost_nodes``) that the API still calls Ready and whose kubelet still does
        not answer: the pods created now are kept off them (node_exclusion.py). A node drops out once
        NotReady (its taint keeps pods off) or answering again."""
        with self._lock:
            held = self._held | found
        keep = frozenset(n for n in held if n in nodes and not nodes[n].lost and self.probe.answers(nodes[n]) is False)
        with self._lock:
            self._held = keep
        return keep

    def lost_nodes(self, ranks: Iterable[D.RankProgress], facts: tuple[PodView, ...],
                   nodes: dict[str, D.NodeView]) -> frozenset[str]:
        """Nodes of the job's running pods that every rank (any job's) went quiet on at once and whose
        kubelet does not answer while a node still heard from does (heartbeat_checks.quiet_nodes,
        node_probe.py): a node lost before the control plane marks it NotReady."""
        ranks = list(ranks)
        running = {(p.name, p.node) for p in facts if p.phase == "Running" and not p.deleting and p.node}
        mine = {r.node_name for r in ranks if (r.pod_name, r.node_name) in running}
        if not mine or self.heartbeats is None:
            return frozenset()
        for n in sorted(mine):
            if n in nodes and not nodes[n].lost:
                self.probe.learn(nodes[n])
        t = D.Timeouts(interval_s=self.settings.heartbeat_interval_s)
        own = [r for r in ranks if r.node_name in mine]
        if not quiet_nodes(own, t, self.heartbeats.newest_heard()):
            return frozenset()  # the usual pass: some rank of the job beats on each of its nodes
        everyone = self.heartbeats.all_ranks()
        quiet_anywhere = quiet_nodes(everyone, t, self.heartbeats.newest_heard())
        quiet = quiet_anywhere & mine
        suspects = [nodes[n] for n in sorted(quiet) if n in nodes and not nodes[n].lost]
        if not suspects:
            return frozenset()
        # The control: a node some rank (of any job) still beats from has a kubelet that runs pods. Not
        # any node: the first by name may have no kubelet to answer (kwok), and then nothing is concluded
        # (CI: a job whose survivor's trainer had just exited, on its broken collective, had no node heard).
        beating = {r.node_name for r in everyone if r.node_name} - quiet_anywhere
        heard = [nodes[n] for n in sorted(mine - quiet) + sorted(beating - mine) if n in nodes and not nodes[n].lost]
        others = [v for n, v in sorted(nodes.items()) if n not in quiet and not v.lost and v.address]
        return self.probe.lost(suspects, heard or others)

    # ------------------------------------------------------------------ act
    def before_create(self, job: Any) -> None:
        """The job's token Secret must exist before its pods reference it."""
        if self.heartbeats is not None:
            self.heartbeats.ensure_secret(job.namespace, job.name, owner_reference(job), job_labels(job.name))

    def prepare_pod(self, manifest: dict[str, Any], job_name: str, avoid_nodes: tuple[str, ...]) -> dict[str, Any]:
        if avoid_nodes:
            manifest["spec"] = R.with_node_anti_affinity(manifest["spec"], avoid_nodes)
        with self._lock:
            held = self._held
        if held:
            manifest = node_exclusion.exclude(manifest, held)
        if self.heartbeats is not None:
            trainer = manifest["spec"]["containers"][0]
            env = [e for e in trainer.get("env") or [] if e.get("name") not in (E.JOB_TOKEN, E.HEARTBEAT_INTERVAL)]
            env.append(token_env(job_name, self.heartbeats.secret_suffix))
            if self.heartbeat_interval_s:
                env.append({"name": E.HEARTBEAT_INTERVAL, "value": f"{self.heartbeat_interval_s:g}"})
            trainer["env"] = env
        return manifest

    def force_delete(self, namespace: str, pod: str) -> bool:
        return self.kube.delete_pod(namespace, pod, grace_s=0)

    def after_write(self, body: dict[str, Any], incident: dict[str, Any] | None) -> None:
        """Metrics, node health and its Events for the incident a pass recorded."""
        if not incident:
            return
        cause = str(incident.get("detectedCause", "unknown"))
        metrics.DETECTIONS.labels(cause).inc()
        lat = incident.get("detectionLatencySeconds")
        if isinstance(lat, (int, float)):
            metrics.DETECTION_LATENCY.labels(cause).observe(float(lat))
        node = incident.get("node")
        if not node or cause not in R.NODE_CAUSES:
            return
        meta = body["metadata"]
        verdict = self.node_health.failed(node, f"{meta['namespace']}/{meta['name']}")
        metrics.NODE_FAILURES.labels(node).inc()
        if verdict.report:
            msg = (f"node {node} failed {verdict.failures} jobs within "
                   f"{self.node_health.window_s:g}s (latest: {cause}); check it")
            log.warning("node keeps failing jobs", extra={"node": node, "failures": verdict.failures})
            self.kube.emit_event(body, "Warning", "NodeFailingJobs", msg)
        if verdict.cordon:
            try:
                self.kube.cordon_node(node)
                self.kube.emit_event(body, "Warning", "NodeCordoned",
                                     f"cordoned node {node}: {verdict.failures} job failures "
                                     f"(policy: cordon after {self.node_health.cordon_after})")
                log.warning("cordoned node", extra={"node": node, "failures": verdict.failures})
            except KubeError as e:
                log.warning("could not cordon node", extra={"node": node, "error": str(e)})

    def on_call(self, body: dict[str, Any], checkpoint_request: str | None, annotate: dict[str, str]) -> None:
        """Carry out on-call requests after the status write that recorded them."""
        meta = body["metadata"]
        ns, name = meta["namespace"], meta["name"]
        if checkpoint_request:
            if self.heartbeats is not None:
                self.heartbeats.request_checkpoint(ns, name, reason=f"on-call request {checkpoint_request}")
            else:
                self.kube.emit_event(body, "Warning", "CheckpointRequestIgnored",
                                     "the operator runs without the heartbeat service "
                                     "(STOKER_OPERATOR_HEARTBEAT_ADDRESS): workers cannot be asked to checkpoint")
        if annotate:
            try:
                self.kube.annotate_job(ns, name, annotate)
            except KubeError as e:
                log.warning("could not acknowledge on-call request", extra={"job": name, "namespace": ns,
                                                                          "error": str(e)})

    def drain(self, body: dict[str, Any], reason: str | None, drain_id: str = "") -> None:
        """Ask every worker to checkpoint and stop before a planned stop: once per
        drain (``drain_id``) in this operator process. The command lives only in the
        heartbeat service's memory, so an operator restarted mid-drain asks again
        (instead of waiting out the drain and losing the steps since the last checkpoint)."""
        if not reason or self.heartbeats is None:
            return
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        with self._lock:
            if drain_id and self._drains_sent.get(key) == drain_id:
                return
            self._drains_sent[key] = drain_id
        self.heartbeats.request_checkpoint(key[0], key[1], stop=True, reason=reason)

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._drains_sent.pop((namespace, name), None)
        if self.heartbeats is not None:
            self.heartbeats.forget(namespace, name)

