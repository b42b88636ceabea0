"""Pure pod-status logic: container state records, restart decisions and the
status the agent publishes (phase rules follow the kubelet's ``getPhase``)."""
from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field

NEVER, ON_FAILURE, ALWAYS = "Never", "OnFailure", "Always"


def now_rfc3339(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


def exit_code_of(returncode: int) -> int:
    """Popen's returncode -> a container exit code (signals as 128+N, like a shell)."""
    return 128 - returncode if returncode < 0 else returncode


def terminated_reason(exit_code: int) -> str:
    return "Completed" if exit_code == 0 else "Error"


def signal_message(exit_code: int) -> str:
    if exit_code > 128:
        try:
            return f"killed by {signal.Signals(exit_code - 128).name}"
        except ValueError:
            pass
    return ""


def should_restart(policy: str, exit_code: int, *, init: bool = False) -> bool:
    if init:  # init containers never restart after success; Always acts like OnFailure
        return exit_code != 0 and policy != NEVER
    return policy == ALWAYS or (policy == ON_FAILURE and exit_code != 0)


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
    """Delay before restart number ``attempt+1`` (kubelet: 10s doubling to 5min;
    this agent defaults to a much shorter base so tests stay quick)."""
    return min(cap, base * (2 ** max(0, attempt)))


@dataclass
class ContainerState:
    """What the agent knows about one container; ``to_status`` renders it."""
    name: str
    image: str = ""
    init: bool = False
    state: str = "waiting"            # waiting | running | terminated
    reason: str = "ContainerCreating"  # waiting reason, or terminated reason
    message: str = ""
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    restart_count: int = 0
    last_terminated: dict | None = None
    pid: int | None = None
    ever_started: bool = False
    next_start_at: float = 0.0        # time.monotonic() when it may (re)start
    backoff_attempt: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def succeeded(self) -> bool:
        return self.state == "terminated" and self.exit_code == 0

    def mark_running(self, pid: int, t: float | None = None) -> None:
        if self.ever_started:
            self.restart_count += 1
        self.ever_started = True
        self.state, self.reason, self.message = "running", "", ""
        self.pid, self.started_at, self.finished_at, self.exit_code = pid, now_rfc3339(t), None, None

    def mark_terminated(self, exit_code: int, *, reason: str | None = None,
                        message: str = "", t: float | None = None) -> None:
        self.state = "terminated"
        self.exit_code = exit_code
        self.reason = reason or terminated_reason(exit_code)
        self.message = message or signal_message(exit_code)
        self.finished_at = now_rfc3339(t)
        self.started_at = self.started_at or self.finished_at
        self.pid = None

    def terminated_record(self) -> dict:
        rec = {"exitCode": self.exit_code, "reason": self.reason,
               "startedAt": self.started_at, "finishedAt": self.finished_at}
        if self.message:
            rec["message"] = self.message
        if self.pid is not None:
            rec["containerID"] = f"process://{self.pid}"
        return rec

    def mark_waiting_restart(self, reason: str = "CrashLoopBackOff", message: str = "") -> None:
        """After a termination that the restart policy restarts."""
        self.last_terminated = self.terminated_record()
        self.state, self.reason, self.message = "waiting", reason, message
        self.exit_code = None

    def mark_waiting(self, reason: str, message: str = "") -> None:
        self.state, self.reason, self.message = "waiting", reason, message

    def to_status(self, ready: bool) -> dict:
        if self.state == "running":
            state = {"running": {"startedAt": self.started_at}}
        elif self.state == "terminated":
            state = {"terminated": {k: v for k, v in self.terminated_record().items() if v is not None}}
        else:
            state = {"waiting": {"reason": self.reason, **({"message": self.message} if self.message else {})}}
        out = {
            "name": self.name,
            "image": self.image or "none",
            "imageID": "",
            "ready": ready,
            "started": self.state == "running",
            "restartCount": self.restart_count,
            "state": state,
            "lastState": {"terminated": self.last_terminated} if self.last_terminated else {},
        }
        if self.pid is not None:
            out["containerID"] = f"process://{self.pid}"
        return out


def init_done(inits: list[ContainerState]) -> bool:
    return all(c.succeeded for c in inits)


def pod_phase(policy: str, inits: list[ContainerState], mains: list[ContainerState]) -> str:
    if not init_done(inits):
        if any(c.state == "terminated" and c.exit_code != 0 for c in inits):
            return "Failed"  # a failed init container that will not be restarted
        return "Pending"
    running = waiting = stopped = succeeded = 0
    for c in mains:
        if c.state == "running":
            running += 1
        elif c.state == "terminated":
            stopped += 1
            succeeded += c.exit_code == 0
        elif c.last_terminated is not None:
            stopped += 1
        else:
            waiting += 1
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if stopped:
        if policy == ALWAYS:
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        if policy == NEVER:
            return "Failed"
        return "Running"
    return "Pending"


def terminal(phase: str) -> bool:
    return phase in ("Succeeded", "Failed")


def _condition(typ: str, ok: bool, reason: str = "", message: str = "", prev: dict | None = None) -> dict:
    status = "True" if ok else "False"
    prev = prev or {}
    c = {"type": typ, "status": status,
         "lastTransitionTime": prev.get("lastTransitionTime") if prev.get("status") == status
         else now_rfc3339(), "lastProbeTime": None}
    if not ok:
        c["reason"], c["message"] = reason, message
    return c


def pod_status(*, policy: str, inits: list[ContainerState], mains: list[ContainerState],
               ready: dict[str, bool], pod_ip: str, host_ip: str, start_time: str,
               previous: dict | None = None) -> dict:
    """The full ``status`` to publish. ``previous`` (the pod's current status) keeps
    condition transition times stable."""
    prev_conds = {c.get("type"): c for c in (previous or {}).get("conditions") or []}
    phase = pod_phase(policy, inits, mains)
    initialized = init_done(inits)
    unready = [c.name for c in mains if not ready.get(c.name)]
    if terminal(phase):
        ready_ok, reason, msg = False, "PodCompleted", ""
    else:
        ready_ok = initialized and not unready
        reason = "ContainersNotReady" if initialized else "ContainersNotInitialized"
        msg = f"containers with unready status: [{' '.join(unready)}]" if unready else ""
    pending_inits = [c.name for c in inits if not c.succeeded]
    conditions = [
        _condition("Initialized", initialized or (terminal(phase) and not pending_inits),
                   "ContainersNotInitialized",
                   f"containers with incomplete status: [{' '.join(pending_inits)}]",
                   prev_conds.get("Initialized")),
        _condition("ContainersReady", ready_ok, reason, msg, prev_conds.get("ContainersReady")),
        _condition("Ready", ready_ok, reason, msg, prev_conds.get("Ready")),
    ]
    status = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip, "podIPs": [{"ip": pod_ip}],
        "startTime": start_time,
        "containerStatuses": [c.to_status(bool(ready.get(c.name))) for c in mains],
    }
    if inits:
        status["initContainerStatuses"] = [c.to_status(c.succeeded) for c in inits]
    return status


def lost_container(prev_status: dict | None, name: str) -> tuple[int, dict | None, str | None] | None:
    """When the agent (re)starts and the API says a container had already started
    but the agent has no process for it (the agent or the host was restarted),
    return (restartCount, state.terminated or None, state.running.startedAt or
    None) to continue from; None if the container never started."""
    if not prev_status:
        return None
    for cs in prev_status:
        if cs.get("name") != name:
            continue
        state = cs.get("state") or {}
        if "running" in state or "terminated" in state or cs.get("restartCount"):
            return (cs.get("restartCount", 0), (state.get("terminated") or None),
                    (state.get("running") or {}).get("startedAt"))
    return None
