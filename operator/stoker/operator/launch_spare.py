"""Hot spares, the launcher's part (issue 12, spec.spares).

A spare pod runs the same launcher and rendezvous as the job's workers. torchrun's dynamic
rendezvous puts an agent that arrives when the round is already full (``--nnodes=N:N``) on its
redundancy list: it keeps alive, restarts nobody, and joins the next round as soon as fewer than N
participants are left, e.g. when a lost node's agent stops keeping alive (``pods.spare_keep_alive``).
The operator decides nothing for the join itself (policy ``recovery.spare_covers`` only records it,
deletes the lost pod and starts the next spare afterwards).

This module adds three things:

- ``warm_on_standby``: the moment the agent goes on the redundancy list, a warm trainer process
  (``launch_warm``) starts importing torch and the trainer for each local rank, so the spare's first
  trainer starts warm when it is needed instead of importing then;
- ``quick_expiry``: a lost node's agent stays a participant of the round until its keep-alive expires
  (interval x attempts after its last write, up to 3 s with ``pods.SPARE_KEEP_ALIVE``), and the
  survivors and the spare cannot form the next round before. Once the round is broken (complete with
  fewer than N participants left: some have left it to re-join) every live participant is about to
  leave it too, so one silent for ``BROKEN_ROUND_EXPIRY`` intervals is taken for gone at once. A live
  one taken for gone by mistake only re-joins, as it was about to; an unbroken round keeps torch's rule;
- ``ends_cleanly``: a spare still waiting when the job ends is told so by the rendezvous
  (``RendezvousGracefulExitError``); torch's agent ``run`` then returns None and torchrun's
  ``launch_agent`` fails on it (``None.is_failed()``), failing a pod that did nothing wrong. Here it
  returns a succeeded result and the pod exits 0.
"""
from __future__ import annotations

import datetime as dt
import sys
from typing import Any, Callable

# A participant of a broken round silent this many keep-alive intervals is gone (``quick_expiry``). Each
# live agent writes once per interval (plus the write's own time): half an interval of slack.
BROKEN_ROUND_EXPIRY = 1.5
_SPEC: list[Any] = []   # the worker spec of the agent's current rendezvous (one agent per launcher)


def _say(msg: str) -> None:
    print(f"stoker launch: {msg}", file=sys.stderr, flush=True)


def ends_cleanly() -> bool:
    """See the module docstring; False where torch's agent is not there."""
    try:
        from torch.distributed.elastic.agent.server.api import RunResult, SimpleElasticAgent, WorkerState
    except ImportError:
        return False
    run = getattr(SimpleElasticAgent.run, "stoker_orig", SimpleElasticAgent.run)

    def run_or_spare(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = run(self, *args, **kwargs)
        if result is None:
            _say("the job ended while this pod waited as a spare")
            return RunResult(state=WorkerState.SUCCEEDED)
        return result

    run_or_spare.stoker_orig = run  # type: ignore[attr-defined]
    SimpleElasticAgent.run = run_or_spare  # type: ignore[method-assign]
    return True


def trainer_keys(spec: Any) -> list[tuple[str, ...]]:
    """The command lines torchrun will start the spec's local trainers with (what ``WarmPool`` keys on)."""
    from torch.distributed.elastic.utils import macros

    if not isinstance(spec.entrypoint, str):
        return []   # a function entrypoint: nothing to start warm
    return [(spec.entrypoint, *[str(a) for a in macros.substitute(list(spec.args), str(lr))])
            for lr in range(spec.local_world_size)]


def warm_on_standby(pool: Callable[[], Any]) -> bool:
    """See the module docstring. ``pool``: the launcher's ``WarmPool`` (None: trainers start cold).
    Runs in the agent's thread, the one that starts trainers (warm processes die with it)."""
    try:
        from torch.distributed.elastic.agent.server.api import SimpleElasticAgent
        from torch.distributed.elastic.rendezvous import dynamic_rendezvous as dr
    except ImportError:
        return False
    executor = getattr(dr, "_DistributedRendezvousOpExecutor", None)
    if executor is None or not hasattr(executor, "_add_to_redundancy_list"):
        return False
    rendezvous = getattr(SimpleElasticAgent._rendezvous, "stoker_orig", SimpleElasticAgent._rendezvous)
    standby = getattr(executor._add_to_redundancy_list, "stoker_orig", executor._add_to_redundancy_list)

    def remember_spec(self: Any, worker_group: Any) -> None:
        _SPEC[:] = [worker_group.spec]
        return rendezvous(self, worker_group)

    def on_standby(self: Any) -> None:
        standby(self)
        warm = pool()
        if warm is None or not _SPEC:
            return
        keys = trainer_keys(_SPEC[0])
        for key in keys:
            warm.prewarm(key)
        _say(f"a spare: the training round is full; {len(keys)} warm trainer(s) wait for a place")

    remember_spec.stoker_orig = rendezvous  # type: ignore[attr-defined]
    on_standby.stoker_orig = standby  # type: ignore[attr-defined]
    SimpleElasticAgent._rendezvous = remember_spec  # type: ignore[method-assign]
    executor._add_to_redundancy_list = on_standby
    return True


def quick_expiry() -> bool:
    """See the module docstring; False where torch's rendezvous state holder is not there."""
    try:
        from torch.distributed.elastic.rendezvous import dynamic_rendezvous as dr
    except ImportError:
        return False
    holder = getattr(dr, "_BackendRendezvousStateHolder", None)
    epilogue = getattr(dr, "_remove_participant_epilogue", None)
    if holder is None or epilogue is None or not hasattr(holder, "_sanitize"):
        return False
    sanitize = getattr(holder._sanitize, "stoker_orig", holder._sanitize)

    def sanitize_broken_round(self: Any) -> None:
        sanitize(self)
        gone = broken_round_gone(self._state, self._settings, dt.datetime.now(dt.timezone.utc))
        for node in gone:
            del self._state.participants[node]
            self._state.last_heartbeats.pop(node, None)
            self._dead_nodes.append(node)
        if gone:
            epilogue(self._state, self._settings)

    sanitize_broken_round.stoker_orig = sanitize  # type: ignore[attr-defined]
    holder._sanitize = sanitize_broken_round
    return True


def broken_round_gone(state: Any, settings: Any, now: dt.datetime) -> list[Any]:
    """The participants of a broken fixed-size round (complete, fewer than N left) silent for
    ``BROKEN_ROUND_EXPIRY`` keep-alive intervals."""
    if not state.complete or settings.min_nodes != settings.max_nodes or len(state.participants) >= settings.max_nodes:
        return []
    limit = now - settings.keep_alive_interval * BROKEN_ROUND_EXPIRY
    return [n for n in state.participants if state.last_heartbeats.get(n, now) < limit]
