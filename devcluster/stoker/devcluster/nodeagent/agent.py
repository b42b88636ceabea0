"""The agent's I/O shell: registration, watches, the reconcile loop, state file,
signals. See the package docstring for what it does and does not do."""
from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time

from . import dnsmap, gpus, ipam, jsonlog, kubeletapi, node as nodemod, preload, procs
from .kube import Kube, KubeError, Reflector, pod_path
from .pods import ORPHAN_GRACE_S, Context, PodRunner
from .podstatus import terminal

log = logging.getLogger("nodeagent")

SHIM_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shim")
TICK_S = 0.5  # reconcile period when nothing happens (process exits are polled)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m stoker.devcluster.nodeagent",
                                description="Process node agent (test/local use only; not a kubelet).")
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--node", required=True, help="Node name to register or adopt")
    p.add_argument("--gpus", type=int, default=0, help="nvidia.com/gpu capacity; device ids 0..N-1 are handed to pods as CUDA_VISIBLE_DEVICES")
    p.add_argument("--label", action="append", default=[], metavar="K=V", help="extra node label (repeatable)")
    p.add_argument("--state-dir", required=True, help="state file, pod logs, DNS map")
    p.add_argument("--cpu", default="32", help="cpu capacity to advertise")
    p.add_argument("--memory", default="64Gi", help="memory capacity to advertise")
    p.add_argument("--pods", default="110", help="pod capacity to advertise")
    p.add_argument("--lease-renew-seconds", type=float, default=2.0)
    p.add_argument("--status-seconds", type=float, default=10.0, help="NodeStatus heartbeat period")
    p.add_argument("--restart-backoff-base", type=float, default=1.0,
                   help="first crash-loop delay in seconds, doubling per restart (kubelet: 10)")
    p.add_argument("--restart-backoff-cap", type=float, default=30.0, help="(kubelet: 300)")
    p.add_argument("--kubelet-client-ca", default="",
                   help="CA of the apiserver's kubelet client certificate; enables the kubelet API (container logs)")
    p.add_argument("--kubelet-port", type=int, default=kubeletapi.DEFAULT_PORT,
                   help="port of the kubelet API on the node address (an ephemeral one if taken)")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    labels = {}
    for item in args.label:
        k, sep, v = item.partition("=")
        if not sep or not k:
            p.error(f"--label {item!r}: expected KEY=VALUE")
        labels[k] = v
    args.labels = labels
    return args


class StateFile:
    """<state-dir>/state.json: pod uid -> namespace/name, IP, processes. Lets a
    restarted agent kill what its previous run left behind and keep pod IPs."""

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> dict:
        try:
            with open(self.path) as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return {}

    def save(self, data: dict) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


def kill_leftovers(state: dict) -> int:
    """SIGKILL processes recorded by a previous run (pid reuse is checked)."""
    n = 0
    for entry in (state.get("pods") or {}).values():
        for p in entry.get("procs") or []:
            pid, ident = p.get("pid"), p.get("ident")
            current = procs.process_identity(pid) if pid else None
            if current is not None and current == ident:
                procs.kill_tree(pid, signal.SIGKILL)
                n += 1
            elif current is None and pid:
                procs.signal_group(pid, signal.SIGKILL)  # orphaned members of its group
    return n


class DnsPublisher:
    """Keeps <state-dir>/dns/hosts.json in sync with Services, Pods and
    EndpointSlices of the whole cluster (see dnsmap)."""

    def __init__(self, kube: Kube, path: str, hosts_file: str, stop: threading.Event) -> None:
        self.path, self.hosts_file, self.stop = path, hosts_file, stop
        self.lock = threading.Lock()
        self.objs: dict[str, dict[str, dict]] = {"svc": {}, "pods": {}, "eps": {}}
        self.dirty = threading.Event()
        self.written: dict | None = None
        self.reflectors = [
            Reflector(kube, "/api/v1/services", on_sync=self._sync("svc"), on_event=self._event("svc"),
                      stop=stop, name="services"),
            Reflector(kube, "/api/v1/pods", on_sync=self._sync("pods"), on_event=self._event("pods"),
                      stop=stop, name="all-pods"),
            Reflector(kube, "/apis/discovery.k8s.io/v1/endpointslices", on_sync=self._sync("eps"),
                      on_event=self._event("eps"), stop=stop, name="endpointslices"),
        ]
        dnsmap.write_hosts(path, {})
        dnsmap.write_text(hosts_file, "")

    def _sync(self, kind):
        slim = dnsmap.slim_pod if kind == "pods" else (lambda o: o)

        def f(items):
            with self.lock:
                self.objs[kind] = {i["metadata"]["uid"]: slim(i) for i in items}
            self.dirty.set()
        return f

    def _event(self, kind):
        slim = dnsmap.slim_pod if kind == "pods" else (lambda o: o)

        def f(typ, obj):
            with self.lock:
                if typ == "DELETED":
                    self.objs[kind].pop(obj["metadata"]["uid"], None)
                else:
                    self.objs[kind][obj["metadata"]["uid"]] = slim(obj)
            self.dirty.set()
        return f

    def start(self) -> None:
        for r in self.reflectors:
            r.start()
        threading.Thread(target=self._run, name="dns", daemon=True).start()

    def _run(self) -> None:
        while not self.stop.is_set():
            if not self.dirty.wait(timeout=5):
                continue
            self.stop.wait(0.1)  # coalesce bursts
            self.dirty.clear()
            with self.lock:
                hosts = dnsmap.build_hosts(*(list(self.objs[k].values()) for k in ("svc", "pods", "eps")))
            if hosts != self.written:
                dnsmap.write_text(self.hosts_file, dnsmap.hosts_file_text(hosts))
                dnsmap.write_hosts(self.path, hosts)
                self.written = hosts


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stop = threading.Event()
        self.kube = Kube(args.kubeconfig)
        self.state_dir = os.path.abspath(args.state_dir)
        os.makedirs(os.path.join(self.state_dir, "pods"), exist_ok=True)
        os.makedirs(os.path.join(self.state_dir, "dns"), exist_ok=True)
        self.state_file = StateFile(os.path.join(self.state_dir, "state.json"))
        self.index = ipam.claim_node_index(args.node, self.state_dir)
        self.host_ip = ipam.node_ip(self.index)
        self.cap = nodemod.capacity(args.cpu, args.memory, args.pods, args.gpus)
        self.events: queue.Queue = queue.Queue()
        self.api_pods: dict[str, dict] = {}
        self.runners: dict[str, PodRunner] = {}
        prev = self.state_file.load()
        self.seq = int(prev.get("seq", 0)) if prev.get("index") == self.index else 0
        self.known_ips = {uid: e["ip"] for uid, e in (prev.get("pods") or {}).items()
                          if e.get("ip", "").startswith(f"127.{self.index}.")}
        self.hosts_path = os.path.join(self.state_dir, "dns", "hosts.json")
        self.marker = f"STOKER_NODEAGENT_HOSTS={self.hosts_path}".encode()
        killed = kill_leftovers(prev) + procs.kill_marked(self.marker)
        if killed:
            log.info("killed processes left by a previous run", extra={"count": killed})
        self.ctx = Context(kube=self.kube, node=args.node, host_ip=self.host_ip, state_dir=self.state_dir,
                           hosts_path=self.hosts_path, shim_dir=SHIM_DIR,
                           hosts_file=os.path.join(self.state_dir, "dns", "hosts"),
                           preload_lib=preload.build(),
                           allocatable=self.cap, backoff_base=args.restart_backoff_base,
                           backoff_cap=args.restart_backoff_cap, save_state=self.save_state,
                           gpu_pool=gpus.GpuPool(args.gpus))
        self.save_state()

    # -------------------------------------------------------------- plumbing
    def save_state(self) -> None:
        pods = {uid: {"pod": r.key, "ip": r.ip, "procs": r.processes()} for uid, r in self.runners.items()}
        for uid, ip in self.known_ips.items():
            pods.setdefault(uid, {"ip": ip, "procs": []})
        self.state_file.save({"node": self.args.node, "index": self.index, "seq": self.seq, "pods": pods})

    def _allocate_ip(self, pod: dict) -> str:
        if (pod.get("spec") or {}).get("hostNetwork"):
            return self.host_ip
        uid = pod["metadata"]["uid"]
        in_use = {r.ip for r in self.runners.values()} - {self.host_ip}
        ip = self.known_ips.get(uid) or (pod.get("status") or {}).get("podIP") or ""
        if ip.startswith(f"127.{self.index}.") and ip not in in_use:
            return ip
        ip, self.seq = ipam.next_pod_ip(self.index, self.seq, in_use | set(self.known_ips.values()))
        return ip

    def _on_sync(self, items: list[dict]) -> None:
        self.events.put(("SYNC", items))

    def _on_event(self, typ: str, obj: dict) -> None:
        self.events.put((typ, obj))

    def _handle(self, typ: str, obj) -> None:
        if typ == "SYNC":
            self.api_pods = {p["metadata"]["uid"]: p for p in obj}
        elif typ == "DELETED":
            self.api_pods.pop(obj["metadata"]["uid"], None)
        else:
            self.api_pods[obj["metadata"]["uid"]] = obj

    # ------------------------------------------------------------- reconcile
    def reconcile(self) -> None:
        now = time.monotonic()
        changed = False
        for uid, pod in self.api_pods.items():
            meta = pod["metadata"]
            r = self.runners.get(uid)
            if r is None:
                if meta.get("deletionTimestamp") or terminal((pod.get("status") or {}).get("phase", "")):
                    if meta.get("deletionTimestamp"):
                        self._delete_unowned(pod)
                    continue
                r = PodRunner(self.ctx, pod, self._allocate_ip(pod))
                self.runners[uid] = r
                self.known_ips.pop(uid, None)
                changed = True
                log.info("pod admitted", extra={"pod": r.key, "uid": uid, "pod_ip": r.ip})
            else:
                r.pod = pod
            if meta.get("deletionTimestamp"):
                grace = meta.get("deletionGracePeriodSeconds")
                if grace is None:
                    grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
                r.begin_delete(now, float(grace), "deleted")
        for uid, r in list(self.runners.items()):
            if uid not in self.api_pods:
                r.gone = True
                r.begin_delete(now, ORPHAN_GRACE_S, "pod no longer in the API")
            r.step(now)
            if r.finished:
                if r.finish_delete():
                    r.release()
                    del self.runners[uid]
                    changed = True
                continue
            if not r.gone:
                r.publish()
            if r.gpu_ids and terminal(r.phase()):
                r.release()  # finished pods hold no devices (the scheduler no longer counts them)
        if changed:
            self.save_state()

    def _delete_unowned(self, pod: dict) -> None:
        meta = pod["metadata"]
        try:
            self.kube.delete(pod_path(meta["namespace"], meta["name"]),
                             {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}})
            log.info("pod removed", extra={"pod": f"{meta['namespace']}/{meta['name']}"})
        except KubeError as e:
            if e.status not in (404, 409):
                log.warning("pod delete failed", extra={"pod": meta["name"], "error": str(e)[:300]})

    # ------------------------------------------------------------------ main
    def start_watchdog(self) -> None:
        """A process in its own session that SIGKILLs our pods' processes when we
        die, even by SIGKILL (see watchdog). We hold the only write end of its stdin."""
        self.watchdog = subprocess.Popen(
            [sys.executable, "-m", "stoker.devcluster.nodeagent.watchdog", self.marker.decode()],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True,
            cwd="/")

    def container_running(self, ns: str, pod: str, container: str) -> bool:
        """For the kubelet API's log follow (called from its threads)."""
        key = f"{ns}/{pod}"
        for _ in range(3):
            try:
                for r in list(self.runners.values()):
                    if r.key == key and not r.finished:
                        p = r.procs.get(container)
                        return p is not None and p.poll() is None
                return False
            except RuntimeError:  # dict changed while copying; try again
                continue
        return True

    def start_kubelet_api(self) -> int:
        if not self.args.kubelet_client_ca:
            return 0
        self.kubelet_api = kubeletapi.KubeletServer(
            state_dir=self.state_dir, ip=self.host_ip, node=self.args.node, client_ca=self.args.kubelet_client_ca,
            is_running=self.container_running, stop=self.stop, port=self.args.kubelet_port)
        self.kubelet_api.start()
        return self.kubelet_api.port

    def run(self) -> int:
        args = self.args
        self.start_watchdog()
        kubelet_port = self.start_kubelet_api()
        labels = nodemod.node_labels(args.node, args.labels)
        delay = 0.5
        while True:  # the apiserver may not be up yet
            try:
                node = nodemod.register(self.kube, name=args.node, labels=labels)
                hb = nodemod.Heartbeat(self.kube, name=args.node, ip=self.host_ip, cap=self.cap,
                                       node_uid=node["metadata"]["uid"], stop=self.stop,
                                       lease_interval=args.lease_renew_seconds,
                                       status_interval=args.status_seconds, kubelet_port=kubelet_port)
                hb.post_status()
                hb.renew_lease()
                break
            except Exception as e:  # noqa: BLE001
                log.warning("node registration failed; retrying", extra={"error": str(e)[:300], "retry_s": delay})
                if self.stop.wait(delay):
                    return self.shutdown()
                delay = min(delay * 2, 10.0)
        hb.start()
        DnsPublisher(self.kube, self.ctx.hosts_path, self.ctx.hosts_file, self.stop).start()
        Reflector(self.kube, "/api/v1/pods", query={"fieldSelector": f"spec.nodeName={args.node}"},
                  on_sync=self._on_sync, on_event=self._on_event, stop=self.stop, name="pods").start()
        log.info("node agent up", extra={"node_name": args.node, "node_ip": self.host_ip,
                                         "index": self.index, "state_dir": self.state_dir})
        while not self.stop.is_set():
            try:
                item = self.events.get(timeout=TICK_S)
                self._handle(*item)
                while True:
                    self._handle(*self.events.get_nowait())
            except queue.Empty:
                pass
            if self.stop.is_set():
                break
            try:
                self.reconcile()
            except Exception:  # noqa: BLE001 - one bad pass must not kill the node
                log.exception("reconcile failed")
                self.stop.wait(1.0)
        return self.shutdown()

    def shutdown(self) -> int:
        """Like a machine that died: kill every pod process, leave the API alone
        (the node lifecycle controller must notice the node is gone)."""
        n = 0
        for r in self.runners.values():
            n += len(r.procs)
            r.kill_now()
            r.procs.clear()
        n += procs.kill_marked(self.marker)
        self.save_state()
        log.info("node agent stopped; pod processes killed, node left as is", extra={"killed": n})
        return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    jsonlog.setup(args.node, args.log_level)
    agent = Agent(args)

    def on_signal(signum, _frame):
        log.info("signal received", extra={"signal": signal.Signals(signum).name})
        agent.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    rc = agent.run()
    logging.shutdown()
    os._exit(rc)  # watch threads block in reads; do not wait for them
