"""One pod on this node: its containers' processes, restarts, deletion, and
the status to publish. ``PodRunner.step`` is called from the agent's single
reconcile thread; all decisions come from podstatus / envvars (pure)."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass

from . import envvars, gpus, kubeletapi, probes, procs
from .kube import Kube, KubeError
from .podstatus import (ContainerState, backoff_seconds, exit_code_of, lost_container,
                        now_rfc3339, pod_phase, pod_status, should_restart, terminal)

log = logging.getLogger("nodeagent.pods")

START_RETRY_S = 2.0       # retry delay after CreateContainerConfigError
ORPHAN_GRACE_S = 2.0      # grace for pods that vanished from the API (kubelet's minimum)


@dataclass
class Context:
    """What every PodRunner needs from the agent."""
    kube: Kube
    node: str
    host_ip: str
    state_dir: str
    hosts_path: str
    shim_dir: str
    hosts_file: str            # the same map as hosts_path, for the C shim
    preload_lib: str | None    # the C shim (LD_PRELOAD), None without a C compiler
    allocatable: dict
    backoff_base: float
    backoff_cap: float
    save_state: object  # callable() -> None
    gpu_pool: gpus.GpuPool | None = None


def pod_key(pod: dict) -> str:
    m = pod["metadata"]
    return f"{m['namespace']}/{m['name']}"


def base_env(hostname: str) -> dict[str, str]:
    """Host environment a pod process starts from (a container would get its
    image's env; here: PATH with the agent's Python first, HOME, locale)."""
    import sys
    path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    env = {"PATH": f"{os.path.dirname(sys.executable)}:{path}",
           "HOME": os.environ.get("HOME", "/root"), "HOSTNAME": hostname,
           "PYTHONUNBUFFERED": "1"}
    for k in ("LANG", "LC_ALL", "TZ", "TMPDIR"):
        if k in os.environ:
            env[k] = os.environ[k]
    return env


class PodRunner:
    def __init__(self, ctx: Context, pod: dict, ip: str) -> None:
        self.ctx, self.pod, self.ip = ctx, pod, ip
        meta, spec = pod["metadata"], pod.get("spec") or {}
        self.uid, self.ns, self.name = meta["uid"], meta["namespace"], meta["name"]
        self.key = f"{self.ns}/{self.name}"
        self.policy = spec.get("restartPolicy") or "Always"
        self.hostname = (spec.get("hostname") or self.name)[:63]
        self.specs = {c["name"]: c for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])}
        self.inits = [ContainerState(c["name"], c.get("image", ""), init=True) for c in spec.get("initContainers") or []]
        self.mains = [ContainerState(c["name"], c.get("image", "")) for c in spec.get("containers") or []]
        self.procs: dict[str, subprocess.Popen] = {}
        self.started_mono: dict[str, float] = {}
        self.prober = probes.Prober()
        self.dir = os.path.join(ctx.state_dir, "pods", f"{self.ns}_{self.name}")
        os.makedirs(self.dir, exist_ok=True)
        prev = pod.get("status") or {}
        self.start_time = prev.get("startTime") or now_rfc3339()
        self.deleting = False
        self.gone = False          # no longer in the API
        self.kill_deadline = 0.0
        self.killed = False
        self.published: dict | None = prev or None
        need, self.gpu_positions = gpus.plan(spec)
        self.gpu_ids = ctx.gpu_pool.take(need) if ctx.gpu_pool and need else []
        if len(self.gpu_ids) < need:
            log.warning("not enough free GPUs for pod", extra={"pod": self.key, "need": need, "got": self.gpu_ids})
        self._adopt(prev)

    def release(self) -> None:
        """The pod is gone from this node: free its devices."""
        if self.ctx.gpu_pool and self.gpu_ids:
            self.ctx.gpu_pool.give_back(self.gpu_ids)
        self.gpu_ids = []

    # ------------------------------------------------------------------ state
    def containers(self) -> list[ContainerState]:
        return self.inits + self.mains

    def _container(self, name: str) -> ContainerState:
        return next(c for c in self.containers() if c.name == name)

    def _adopt(self, prev: dict) -> None:
        """Continue from what the API says ran before (the agent restarted)."""
        now = time.monotonic()
        for group, key in ((self.inits, "initContainerStatuses"), (self.mains, "containerStatuses")):
            for c in group:
                lost = lost_container(prev.get(key), c.name)
                if lost is None:
                    continue
                c.restart_count, term, started_at = lost
                c.ever_started = True
                if term:
                    c.mark_terminated(term.get("exitCode", 1), reason=term.get("reason"),
                                      message=term.get("message", ""))
                    c.started_at, c.finished_at = term.get("startedAt"), term.get("finishedAt")
                else:
                    c.started_at = started_at
                    c.mark_terminated(137, reason="Error",
                                      message="process lost: the node agent was restarted")
                if not (c.init and c.succeeded):
                    self._after_exit(c, now, ran=0.0)

    def processes(self) -> list[dict]:
        return [{"pid": p.pid, "ident": procs.process_identity(p.pid)} for p in self.procs.values()]

    def phase(self) -> str:
        return pod_phase(self.policy, self.inits, self.mains)

    @property
    def finished(self) -> bool:
        """Deletion done: no process left."""
        return self.deleting and not self.procs

    # ------------------------------------------------------------------ steps
    def step(self, now: float) -> None:
        self._reap(now)
        if self.deleting:
            if self.procs and not self.killed and now >= self.kill_deadline:
                for name, p in self.procs.items():
                    log.info("grace period over; killing", extra={"pod": self.key, "container": name})
                    procs.kill_tree(p.pid, signal.SIGKILL)
                self.killed = True
            return
        if terminal(self.phase()):
            return
        for c in self.inits:
            if c.succeeded:
                continue
            if c.state != "terminated" and c.name not in self.procs and now >= c.next_start_at:
                self._start(c, now)
            return  # init containers run one at a time, before the others
        for c in self.mains:
            if c.state != "terminated" and c.name not in self.procs and now >= c.next_start_at:
                self._start(c, now)
        for c in self.mains:
            if c.name in self.procs:
                self.prober.maybe_probe(c.name, self.specs[c.name], self.ip, now,
                                        self.started_mono.get(c.name, now))

    def begin_delete(self, now: float, grace: float, reason: str) -> None:
        deadline = now + max(0.0, grace)
        if self.deleting:
            self.kill_deadline = min(self.kill_deadline, deadline)
            return
        self.deleting, self.kill_deadline = True, deadline
        log.info("stopping pod", extra={"pod": self.key, "reason": reason, "grace_s": grace,
                                         "containers": sorted(self.procs)})
        for p in self.procs.values():
            procs.signal_group(p.pid, signal.SIGTERM)

    def kill_now(self) -> None:
        """The machine is 'gone': SIGKILL everything, no status."""
        for p in self.procs.values():
            procs.kill_tree(p.pid, signal.SIGKILL)
        for p in self.procs.values():
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def _reap(self, now: float) -> None:
        for name, proc in list(self.procs.items()):
            rc = proc.poll()
            if rc is None:
                continue
            del self.procs[name]
            procs.signal_group(proc.pid, signal.SIGKILL)  # the container ends with its main process
            c = self._container(name)
            code = exit_code_of(rc)
            c.mark_terminated(code, message=self._fallback_message(name, code))
            ran = now - self.started_mono.pop(name, now)
            log.info("container exited", extra={"pod": self.key, "container": name,
                                                "exit_code": code, "ran_s": round(ran, 3)})
            self.prober.forget(name)
            if not self.deleting:
                self._after_exit(c, now, ran)
            self.ctx.save_state()

    def _fallback_message(self, name: str, code: int) -> str:
        """terminationMessagePolicy FallbackToLogsOnError: a failed container's log tail.
        (There is no terminationMessagePath file: processes share the host's filesystem.)"""
        if code == 0 or self.specs[name].get("terminationMessagePolicy") != "FallbackToLogsOnError":
            return ""
        return kubeletapi.termination_log_tail(self.log_path(name))

    def _after_exit(self, c: ContainerState, now: float, ran: float) -> None:
        if not should_restart(self.policy, c.exit_code, init=c.init):
            return
        if ran > 2 * self.ctx.backoff_cap:
            c.backoff_attempt = 0
        delay = backoff_seconds(c.backoff_attempt, self.ctx.backoff_base, self.ctx.backoff_cap)
        c.backoff_attempt += 1
        c.mark_waiting_restart("CrashLoopBackOff",
                               f"back-off {delay:g}s restarting failed container={c.name} pod={self.name}")
        c.next_start_at = now + delay

    def _pod_view(self) -> dict:
        view = dict(self.pod)
        status = dict(view.get("status") or {})
        status.update(podIP=self.ip, podIPs=[{"ip": self.ip}], hostIP=self.ctx.host_ip,
                      hostIPs=[{"ip": self.ctx.host_ip}])
        view["status"] = status
        return view

    def _lookup(self, kind: str):
        def get(ns: str, name: str):
            return self.ctx.kube.get_or_none(f"/api/v1/namespaces/{ns}/{kind}/{name}")
        return get

    def environment(self, spec: dict) -> dict[str, str]:
        base = base_env(self.hostname)
        devices = gpus.visible_devices(self.gpu_ids, self.gpu_positions.get(spec["name"], []))
        base.update(CUDA_VISIBLE_DEVICES=devices, NVIDIA_VISIBLE_DEVICES=devices or "void")
        env = envvars.container_env(
            self._pod_view(), spec, get_secret=self._lookup("secrets"),
            get_configmap=self._lookup("configmaps"), node_allocatable=self.ctx.allocatable,
            base=base)
        env.update({"STOKER_NODEAGENT_HOSTS": self.ctx.hosts_path,
                    "STOKER_NODEAGENT_NAMESPACE": self.ns,
                    "STOKER_NODEAGENT_HOSTNAME": self.hostname,
                    "STOKER_NODEAGENT_POD_IP": self.ip})
        env["PYTHONPATH"] = self.ctx.shim_dir + (f":{env['PYTHONPATH']}" if env.get("PYTHONPATH") else "")
        if self.ctx.preload_lib:
            env["STOKER_NODEAGENT_HOSTS_FILE"] = self.ctx.hosts_file
            env["LD_PRELOAD"] = self.ctx.preload_lib + (f" {env['LD_PRELOAD']}" if env.get("LD_PRELOAD") else "")
        return env

    def log_path(self, container: str) -> str:
        return os.path.join(self.dir, f"{container}.log")

    def _start(self, c: ContainerState, now: float) -> None:
        spec = self.specs[c.name]
        try:
            env = self.environment(spec)
            argv = envvars.command_line(spec, env)
            cwd = spec.get("workingDir") or self.dir
            if not os.path.isdir(cwd):
                raise envvars.EnvError(f"workingDir {cwd!r} of container {c.name!r} does not exist on this host "
                                       "(the process node agent runs processes on the host; use an existing path)")
        except (envvars.EnvError, KubeError) as e:
            if c.reason != "CreateContainerConfigError" or c.message != str(e):
                log.warning("cannot start container", extra={"pod": self.key, "container": c.name, "error": str(e)})
            c.mark_waiting("CreateContainerConfigError", str(e))
            c.next_start_at = now + START_RETRY_S
            return
        try:
            kubeletapi.record_start(self.log_path(c.name))  # where this instance's log begins
            proc = procs.spawn(argv, env=env, cwd=cwd, log_path=self.log_path(c.name))
        except OSError as e:
            c.mark_running(0)
            c.pid = None
            c.mark_terminated(128, reason="StartError", message=f"{argv[0]}: {e.strerror or e}")
            log.warning("container failed to start", extra={"pod": self.key, "container": c.name, "error": str(e)})
            self._after_exit(c, now, 0.0)
            return
        self.procs[c.name] = proc
        self.started_mono[c.name] = now
        c.mark_running(proc.pid)
        log.info("container started", extra={"pod": self.key, "container": c.name, "pid": proc.pid,
                                             "restart_count": c.restart_count, "pod_ip": self.ip})
        self.ctx.save_state()

    # ----------------------------------------------------------------- status
    def status(self) -> dict:
        ready = {c.name: c.running and self.prober.ready(c.name, self.specs[c.name]) and not self.deleting
                 for c in self.mains}
        return pod_status(policy=self.policy, inits=self.inits, mains=self.mains, ready=ready,
                          pod_ip=self.ip, host_ip=self.ctx.host_ip, start_time=self.start_time,
                          previous=self.published)

    def publish(self) -> None:
        """PATCH the status if it changed (uid precondition: never write to a
        recreated pod of the same name)."""
        status = self.status()
        if self.published is not None and _same_status(status, self.published):
            return
        body = {"metadata": {"uid": self.uid}, "status": status}
        try:
            self.ctx.kube.patch(f"/api/v1/namespaces/{self.ns}/pods/{self.name}/status", body)
        except KubeError as e:
            if e.status in (404, 409):
                self.gone = e.status == 404 or self.gone
                return
            log.warning("status update failed", extra={"pod": self.key, "error": str(e)[:300]})
            return
        if (self.published or {}).get("phase") != status["phase"]:
            log.info("pod phase", extra={"pod": self.key, "phase": status["phase"]})
        self.published = status

    def finish_delete(self) -> bool:
        """Remove the pod object (grace 0, as the kubelet does). True when done."""
        if self.gone:
            return True
        self.publish()
        try:
            self.ctx.kube.delete(f"/api/v1/namespaces/{self.ns}/pods/{self.name}",
                                 {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}})
        except KubeError as e:
            if e.status not in (404, 409):
                log.warning("pod delete failed", extra={"pod": self.key, "error": str(e)[:300]})
                return False
        log.info("pod removed", extra={"pod": self.key})
        return True


def _same_status(a: dict, b: dict) -> bool:
    keys = ("phase", "conditions", "podIP", "hostIP", "containerStatuses", "initContainerStatuses", "startTime")
    return all(a.get(k) == b.get(k) for k in keys)
