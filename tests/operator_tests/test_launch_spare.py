"""Hot spares (issue 12), the launcher's part (stoker.operator.launch_spare): a spare's trainer is warm
before it is needed, and a spare never needed ends its pod with 0."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import types

import pytest

from stoker.operator import launch_spare, launch_warm

from .test_launch_inplace import SCRIPT

pytestmark = pytest.mark.torch


def test_a_spare_never_needed_ends_its_pod_cleanly(monkeypatch):
    from torch.distributed.elastic.agent.server.api import SimpleElasticAgent, WorkerState
    from torch.distributed.elastic.rendezvous import RendezvousGracefulExitError

    monkeypatch.setattr(SimpleElasticAgent, "run", SimpleElasticAgent.run)   # put back afterwards

    def closed(role):
        raise RendezvousGracefulExitError("the rendezvous is closed")

    agent = types.SimpleNamespace(_invoke_run=closed, _shutdown=lambda **kw: None, _shutdown_timeout=1,
                                  _total_execution_time=0)
    assert SimpleElasticAgent.run(agent) is None            # what torchrun's launch_agent fails on
    assert launch_spare.ends_cleanly()
    assert SimpleElasticAgent.run(agent).state == WorkerState.SUCCEEDED


def test_a_spare_on_standby_warms_its_trainer_at_once_and_starts_it_warm(monkeypatch, tmp_path):
    from torch.distributed.elastic.agent.server.api import SimpleElasticAgent
    from torch.distributed.elastic.rendezvous import dynamic_rendezvous as dr

    ex = dr._DistributedRendezvousOpExecutor
    monkeypatch.setattr(ex, "_add_to_redundancy_list", ex._add_to_redundancy_list)   # put back afterwards
    monkeypatch.setattr(SimpleElasticAgent, "_rendezvous", SimpleElasticAgent._rendezvous)
    monkeypatch.setattr(launch_warm, "WARM_DELAY_S", 600.0)   # a restart's warm process would wait this long
    script = tmp_path / "trainer.py"
    script.write_text(SCRIPT)
    pool = launch_warm.WarmPool(subprocess.Popen)
    assert launch_spare.warm_on_standby(lambda: pool)
    spec = types.SimpleNamespace(entrypoint=sys.executable, args=("-u", str(script)), local_world_size=1)
    launch_spare._SPEC[:] = [spec]
    kept_alive: list = []
    executor = types.SimpleNamespace(_node="spare", _state=types.SimpleNamespace(round=0, redundancy_list=set()),
                                     _settings=types.SimpleNamespace(run_id="r"), _record=lambda **kw: None,
                                     _keep_alive=lambda: kept_alive.append(1))
    ex._add_to_redundancy_list(executor)
    assert executor._state.redundancy_list == {"spare"} and kept_alive   # torch's own step ran
    args = [sys.executable, "-u", str(script)]
    [warm] = pool._idle[tuple(args)]
    end = time.monotonic() + 60
    while "libtorch" not in open(f"/proc/{warm.pid}/maps").read() and time.monotonic() < end:
        time.sleep(0.1)
    assert time.monotonic() < end                            # imported with no trainer step to wait for
    proc = pool(args=args, env={**os.environ, "OUT": str(tmp_path / "o.json")}, stdout=None, stderr=None)
    assert proc is warm and proc.wait(60) == 3 and pool.handed == 1
    for p in pool._idle.get(tuple(args), []):
        p.kill()
