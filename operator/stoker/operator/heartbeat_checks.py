"""Failure detection from the heartbeat stream (detection.py's part that reads ``RankProgress``). Pure.

Three rules, each with its allowance:

  * **silence**: a rank not heard from for ``heartbeat_s`` (spec.failurePolicy.heartbeatTimeoutSeconds);
  * **frozen**: a rank silent for ``frozen_beats`` heartbeat intervals (at least ``FROZEN_MIN_S``) while
    heartbeats kept arriving from others -- from its own job's ranks or any other job's (``newest_heard``,
    the operator's newest message). Its reporter thread is independent of training, so slow steps,
    checkpoint stalls, data-loader pauses and long first steps never silence it: silence is a frozen
    process (SIGSTOP, a stuck or partitioned node). Measuring against the newest message anywhere,
    not the wall clock, keeps an operator that itself stalled from blaming every worker at once;
  * **stuck collective**: every rank alive, beating, past its first step and waiting in a collective
    (the trainer reports what it is doing: data / compute / collective / checkpoint, and since when)
    for ``collective_after`` (``collective_s``, 6 s, and at least 2x the slowest recent step). A
    slow step, a data-loader pause or a checkpoint stall keeps some rank out of the collective (in
    compute, data or checkpoint), so only a collective that nobody can finish counts;
  * **hang**: the job's step has not advanced within the progress timeout;
  * **frozen launcher**: a running pod's launcher, whose keepalives (launcher_beats.py) count among
    the messages heard, went silent ``LAUNCHER_FROZEN_FACTOR`` x the frozen allowance while others kept
    arriving: a stopped or stuck torchrun agent restarts nothing in place and never ends its pod
    (chaos: an in-place restart waited 120 s for one). Its keepalives also keep the frozen rule
    working when every trainer of a job stopped at once.

And the node rule, for the shell (recovery_shell.py) and ``detection.detect``:

  * **node lost**: every rank heard from a node (any job's) went quiet at once -- its stream ended, or
    it fell silent for ``node_quiet_after`` while heartbeats kept arriving from elsewhere
    (``quiet_nodes``) -- and the node's kubelet does not answer while other nodes' do
    (node_probe.py). One crashed process on a node is quiet too, but its kubelet answers; a
    frozen process likewise: neither is blamed on its node.
"""
from __future__ import annotations

import datetime as dt
from typing import Any, Sequence

from .detection import COLLECTIVE_STUCK, HANG, HEARTBEAT_LOST, NODE_LOST, Finding, RankProgress, Timeouts
from .podview import PodView

FROZEN_MIN_S = 3.0
LAUNCHER_FROZEN_FACTOR = 2.0  # a launcher's allowance, in frozen allowances (a wrong call restarts the job)
LAUNCHER_EXIT_S = 30.0  # a launcher's allowance once its pod's trainers all finished (it ends its pod)
NODE_QUIET_BEATS = 2.0   # a node's ranks all silent this many intervals (or their streams ended): probe it
NODE_QUIET_MIN_S = 1.5
COLLECTIVE = "collective"


def progress_timeout(t: Timeouts, step_times: Sequence[float] = (), checkpoint_s: float | None = None) -> float:
    """How long the step may stay put before the job counts as hung.

    Explicit timeouts are honoured but never below 2x the slowest step seen (a
    slow step is not a hang); derived ones are ``factor`` x the slowest recent
    step, clamped to [floor, ceiling]. A checkpoint's duration is added, since a
    blocking save legitimately holds the step still.
    """
    slowest = max(step_times) if step_times else 0.0
    if t.progress_s is not None:
        base = max(float(t.progress_s), 2.0 * slowest)
    else:
        base = min(t.ceiling_s, max(t.floor_s, t.factor * slowest))
    return base + (checkpoint_s or 0.0)


def _onset(now_wall: dt.datetime, now_mono: float, mono: float) -> dt.datetime:
    return now_wall - dt.timedelta(seconds=max(0.0, now_mono - mono))


def frozen_after(t: Timeouts) -> float:
    """Silence that makes a rank frozen while others beat (seconds)."""
    return max(FROZEN_MIN_S, t.frozen_beats * t.interval_s)


def frozen(live: Sequence[RankProgress], t: Timeouts, newest_heard: float | None,
           relaunching: frozenset[int]) -> tuple[RankProgress, float] | None:
    """(the rank silent longest while heartbeats kept arriving from elsewhere, its silence), if past
    ``frozen_after``."""
    ref = max([r.last_seen for r in live] + ([newest_heard] if newest_heard is not None else []))
    quiet = [r for r in live if r.rank not in relaunching and r.connected and ref - r.last_seen > frozen_after(t)]
    if not quiet:
        return None
    r = min(quiet, key=lambda r: r.last_seen)
    return r, ref - r.last_seen


def newest_message(ranks: Sequence[RankProgress], launchers: Sequence[Any], newest_heard: float | None) -> float:
    """The newest message heard (heartbeat clock): silence is measured against it, not the clock, so an
    operator that itself stalled blames nobody."""
    return max([b.last_seen for b in launchers] + [r.last_seen for r in ranks]
               + ([newest_heard] if newest_heard is not None else []), default=0.0)


def frozen_launcher(launchers: Sequence[Any], pods: Sequence[PodView], ranks: Sequence[RankProgress], t: Timeouts,
                    now_mono: float, now_wall: dt.datetime, newest_heard: float | None) -> Finding | None:
    """HeartbeatLost for the launcher (``LauncherBeat``) of a running pod of this incarnation that went
    silent ``LAUNCHER_FROZEN_FACTOR`` x ``frozen_after`` ago while messages kept arriving (from anywhere:
    an operator that itself stalled blames nobody). Once every trainer of its pod said FINISHED, the
    allowance is ``LAUNCHER_EXIT_S``: a healthy launcher keeps saying it is alive through torchrun's
    exit barrier and then ends its pod, and a kubelet may take seconds to see that; one still silent
    then is stuck on its way out, and its pod would stay Running (the job with it) for ever (CI: a
    launcher SIGSTOPped 2 s before the last step). The new incarnation resumes from the final
    checkpoint."""
    done = {r.pod_name for r in ranks if r.phase == "FINISHED"} - {r.pod_name for r in ranks if r.phase != "FINISHED"}
    running = {p.name for p in pods if p.phase == "Running" and not p.deleting}
    ref = newest_message(ranks, launchers, newest_heard)
    limit = LAUNCHER_FROZEN_FACTOR * frozen_after(t)

    def allowance(b: Any) -> float:
        return max(limit, LAUNCHER_EXIT_S) if b.pod_name in done else limit
    quiet = sorted((b for b in launchers if b.pod_name in running and ref - b.last_seen > allowance(b)),
                   key=lambda b: (b.last_seen, b.pod_name))
    if not quiet:
        return None
    b = quiet[0]
    limit = allowance(b)
    return Finding(HEARTBEAT_LOST, f"the launcher of worker pod {b.pod_name} went silent {ref - b.last_seen:.1f}s ago "
                   f"while heartbeats kept arriving (frozen after {limit:g}s): a stopped or stuck launcher restarts "
                   "no trainer and never ends its pod", pod=b.pod_name, node=b.node_name or None,
                   onset=_onset(now_wall, now_mono, b.last_seen))


def node_quiet_after(t: Timeouts) -> float:
    """Silence (while others beat) after which a rank counts as quiet for the node rule (seconds)."""
    return max(NODE_QUIET_MIN_S, NODE_QUIET_BEATS * t.interval_s)


def _quiet(r: RankProgress, ref: float, after: float) -> bool:
    return not r.connected or ref - r.last_seen > after


def quiet_nodes(ranks: Sequence[RankProgress], t: Timeouts, newest_heard: float | None) -> frozenset[str]:
    """Nodes every rank heard from (any job's; finished ranks left out) has gone quiet on: its stream
    ended, or it has been silent ``node_quiet_after`` while heartbeats kept arriving from elsewhere."""
    live = [r for r in ranks if r.node_name and r.phase not in ("FINISHED", "FAILED")]
    ref = max([r.last_seen for r in live] + ([newest_heard] if newest_heard is not None else []), default=0.0)
    nodes: dict[str, bool] = {}
    for r in live:
        nodes[r.node_name] = nodes.get(r.node_name, True) and _quiet(r, ref, node_quiet_after(t))
    return frozenset(n for n, quiet in nodes.items() if quiet)


def still_beating(pod_name: str, ranks: Sequence[RankProgress], launchers: Sequence[Any], t: Timeouts,
                  newest_heard: float | None) -> bool:
    """The pod still beats: every rank of it (if any; else its launcher's keepalive: a spare, a trainer still
    starting) heard within ``node_quiet_after`` of the newest message. A NotReady node whose pods still beat
    lost the control plane (its kubelet's status did not arrive: a stalled apiserver, a kubelet restart),
    not the job: nothing to recover."""
    on = [r for r in ranks if r.pod_name == pod_name]
    ref = newest_message(ranks, launchers, newest_heard)
    if on:
        return not any(_quiet(r, ref, node_quiet_after(t)) for r in on)
    return any(b.pod_name == pod_name and ref - b.last_seen <= node_quiet_after(t) for b in launchers)


def node_lost(ranks: Sequence[RankProgress], lost_nodes: frozenset[str], now_mono: float,
              now_wall: dt.datetime) -> Finding | None:
    """NodeLost for the first of this job's ranks on a node the shell found lost (``quiet_nodes`` and a
    kubelet that does not answer), before the control plane marks the node NotReady."""
    on = sorted((r for r in ranks if r.node_name in lost_nodes), key=lambda r: (r.node_name, r.rank))
    if not on:
        return None
    r = on[0]
    mates = [x.rank for x in on if x.node_name == r.node_name]
    how = "their heartbeat streams ended" if not any(x.connected for x in on if x.node_name == r.node_name) \
        else "they went silent"
    return Finding(NODE_LOST, f"node {r.node_name} of worker pod {r.pod_name or '?'} is lost: every rank on it "
                   f"(rank {', '.join(map(str, mates))}) went quiet at once ({how}, last heard "
                   f"{now_mono - r.last_seen:.1f}s ago) and its kubelet does not answer while other nodes' do",
                   pod=r.pod_name or None, rank=r.rank, node=r.node_name, step=r.step, step_exact=False,
                   onset=_onset(now_wall, now_mono, max(x.last_seen for x in on if x.node_name == r.node_name)))


def collective_after(t: Timeouts, step_times: Sequence[float] = ()) -> float:
    """How long every rank may wait in a collective before it counts as stuck (seconds)."""
    return max(t.collective_s, 2.0 * max(step_times, default=0.0))


def stuck_collective(live: Sequence[RankProgress], t: Timeouts, now_mono: float,
                     now_wall: dt.datetime) -> Finding | None:
    """Every rank past its first step, training and waiting in a collective for ``collective_after``."""
    if not live or any(r.step < 0 or not r.connected or r.phase != "TRAINING" or r.activity != COLLECTIVE
                       or r.activity_since is None for r in live):
        return None
    since = max(r.activity_since for r in live)  # type: ignore[type-var]
    limit = collective_after(t, [s for r in live for s in r.step_times])
    waited = now_mono - since
    if waited <= limit:
        return None
    last = max(live, key=lambda r: (r.activity_since, r.rank))
    return Finding(COLLECTIVE_STUCK, f"every rank has waited in a collective for {waited:.1f}s at step "
                   f"{min(r.step for r in live)} (limit {limit:g}s: {t.collective_s:g}s, and at least 2x the slowest "
                   f"step) while all kept heartbeating: a stuck collective (a rank's traffic cut, a mismatched "
                   f"collective); rank {last.rank} ({last.pod_name or 'pod ?'}) entered it last",
                   pod=last.pod_name or None, rank=last.rank, node=last.node_name or None, step=last.step,
                   step_exact=False, onset=_onset(now_wall, now_mono, since))


def left_behind(ranks: Sequence[RankProgress], relaunching: frozenset[int], t: Timeouts,
                now_mono: float) -> tuple[RankProgress, float] | None:
    """(a relaunching rank, seconds since the first of its peers' restarted trainers spoke) when that
    is past ``relaunch_lag_s`` and they still wait for it (STARTING: the process group cannot form
    without it). The trainers of a fixed-size job's in-place restart start together (one rendezvous
    round), so one not back long after a peer is stuck in its start: a frozen or hung process
    (chaos: a trainer SIGSTOPped 0.6 s after its restart waited out the 120 s in-place deadline). A
    peer already restoring or training went past the process group with it (a script that opens its
    Session late); a rank whose pod speaks again under another rank number is back."""
    back = [r for r in ranks if r.connected and r.rank not in relaunching and r.phase == "STARTING"]
    pods_back = {r.pod_name for r in ranks if r.connected and r.rank not in relaunching}
    waiting = [r for r in ranks if r.rank in relaunching and r.phase != "FINISHED" and r.pod_name not in pods_back]
    for r in sorted(waiting, key=lambda r: (r.last_seen, r.rank)):
        since = [p.started_at for p in back if p.started_at > r.last_seen]
        if since and now_mono - min(since) > t.relaunch_lag_s:
            return r, now_mono - min(since)
    return None


def _rank_lost(r: RankProgress, what: str, onset: dt.datetime) -> Finding:
    return Finding(HEARTBEAT_LOST, f"rank {r.rank} ({r.pod_name or 'pod ?'}) {what}", pod=r.pod_name or None,
                   rank=r.rank, node=r.node_name or None, step=r.step, step_exact=False, onset=onset)


def check_heartbeats(ranks: Sequence[RankProgress], t: Timeouts, now_mono: float, now_wall: dt.datetime,
                     relaunching: frozenset[int] = frozenset(), newest_heard: float | None = None,
                     together: bool = False) -> Finding | None:
    """Silence or a stalled step across the ranks of the current incarnation. Before the
    first step, and while a rank starts, restores or is ``relaunching`` (see ``relaunching``),
    the progress allowance is ``startup_s``; so is a relaunching rank's silence allowance, unless
    the ranks restart ``together`` (an in-place restart of a fixed-size job; ``left_behind``)."""
    behind = left_behind(ranks, relaunching, t, now_mono) if together else None
    if behind is not None:
        r, lag = behind
        return _rank_lost(r, f"was restarted in place with its peers but its trainer has not spoken {lag:.0f}s "
                          f"after theirs did (limit {t.relaunch_lag_s:g}s): stuck or frozen in its start",
                          _onset(now_wall, now_mono, now_mono - lag))
    live = [r for r in ranks if r.phase not in ("FINISHED", "FAILED")]
    if not live:
        return None
    def allowed(r: RankProgress) -> float:
        return max(t.heartbeat_s, t.startup_s) if r.rank in relaunching else t.heartbeat_s

    # 1) silence: the rank heard from longest ago, past its allowance
    silent = sorted((r for r in live if now_mono - r.last_seen > allowed(r)), key=lambda r: r.last_seen)
    if silent:
        r = silent[0]
        why = f"heartbeat timeout {t.heartbeat_s:g}s" if r.rank not in relaunching else \
            f"its trainer exited and was not started again within the startup allowance {allowed(r):g}s"
        return _rank_lost(r, f"sent no heartbeat for {now_mono - r.last_seen:.0f}s ({why})",
                          _onset(now_wall, now_mono, r.last_seen))
    # 2) frozen: silent while others (this job's ranks or any job's) kept beating
    found = frozen(live, t, newest_heard, relaunching)
    if found is not None:
        r, silence = found
        return _rank_lost(r, f"went silent {silence:.1f}s ago while heartbeats kept arriving (frozen after "
                          f"{frozen_after(t):g}s: a stopped process or a stuck or partitioned node)",
                          _onset(now_wall, now_mono, r.last_seen))
    # 3) a stuck collective: all beating, all waiting in a collective nobody can finish
    found_stuck = stuck_collective(live, t, now_mono, now_wall) if not relaunching else None
    if found_stuck is not None:
        return found_stuck
    # 4) hang: the job's step has not advanced within the progress timeout
    all_times = [s for r in live for s in r.step_times]
    ck = max((r.checkpoint_s or 0.0) for r in live)
    latest_advance = max(r.advanced_at for r in live)
    before_first = all(r.step < 0 for r in live)
    limit = t.startup_s if before_first else progress_timeout(t, all_times, ck or None)
    if any(r.phase in ("STARTING", "RESTORING") or r.rank in relaunching for r in live):
        limit = max(limit, t.startup_s)
    # A rank clearly quieter than the rest (missed 3 beats: SIGSTOPped, wedged) is the culprit.
    newest_seen = max(r.last_seen for r in live)
    quiet = [r for r in live if newest_seen - r.last_seen > max(2.0, 3 * t.interval_s)]
    if any(r.phase == "CHECKPOINTING" for r in live) and not quiet:
        # e.g. storage down: the save retries and the step waits. Not when a rank went quiet:
        # then the others are stuck in the save's collective with it.
        limit = max(limit, t.checkpoint_s)
    stalled_for = now_mono - latest_advance
    if stalled_for <= limit:
        return None
    culprit = min(quiet, key=lambda r: r.last_seen) if quiet else min(live, key=lambda r: (r.step, r.rank))
    extra = " and stopped heartbeating" if quiet else ""
    return Finding(HANG,
                   f"step stuck at {culprit.step} for {stalled_for:.0f}s (progress timeout {limit:.0f}s); "
                   f"rank {culprit.rank} ({culprit.pod_name or 'pod ?'}) is behind{extra}",
                   pod=culprit.pod_name or None, rank=culprit.rank, node=culprit.node_name or None,
                   step=culprit.step, onset=_onset(now_wall, now_mono, latest_advance))


def never_heard(pods: Sequence[PodView], ranks: Sequence[RankProgress], t: Timeouts,
                now_wall: dt.datetime, spares: int = 0) -> Finding | None:
    """A worker pod that has sent no heartbeat ``startup_s`` after the last of the
    incarnation's trainers started (the rendezvous cannot complete before): stuck
    before its first message (an import, the rendezvous, a process group that never
    forms) or it lost the heartbeat address. Only asked of jobs known to heartbeat
    (an earlier message from any rank): a script without the SDK never sends one,
    and that is allowed. Nothing is said while a pod still waits to be scheduled or
    started: its peers wait for it in the rendezvous on purpose. A job's hot spares (``spares``) have no
    trainer until they take a place: that many silent pods are spares once the others are all heard."""
    if not pods or any(p.phase != "Running" or p.started_at is None for p in pods):
        return None
    heard = {r.pod_name for r in ranks}
    silent = sorted((p for p in pods if p.name not in heard), key=lambda p: (p.index, p.name))
    if len(silent) <= spares:
        return None
    last_start = max(p.started_at for p in pods if p.started_at is not None)
    waited = (now_wall - last_start).total_seconds()
    if waited <= t.startup_s:
        return None
    p = silent[0]
    others = f" (and {len(silent) - 1} more)" if len(silent) > 1 else ""
    return Finding(HEARTBEAT_LOST,
                   f"worker pod {p.name}{others} sent no heartbeat in the {waited:.0f}s since every worker started "
                   f"(startup allowance {t.startup_s:g}s, failurePolicy.startupTimeoutSeconds): its trainer is stuck "
                   f"before its first message", pod=p.name, node=p.node,
                   onset=last_start + dt.timedelta(seconds=t.startup_s))
