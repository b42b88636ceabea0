"""The short real-node chaos profile (``bench/chaos.py --nodes real --profile short``) in
`make test-realnodes`: one fault of each real-node kind (a trainer SIGKILLed inside its
container, the container killed by containerd, a worker's node lost, the Helm-installed
operator killed, a worker pod's network cut with iptables DROP inside its own network
namespace for a random 10-60 s, then healed), at random moments of real training (seeded,
the seed printed; ``STOKER_CHAOS_SEED=N`` replays). It fails on any job that did not end
Succeeded with final parameters identical to an undisturbed run, resumed from the newest
commit, without duplicate or orphan pods and with restarts on the infrastructure budget,
and on any fault that did not land. What each network cut led to (a restart and its cause,
or none) is printed and kept in the JSON. The suite brings its own 2-node cluster."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.realnodes, pytest.mark.cluster, pytest.mark.slow, pytest.mark.torch,
              pytest.mark.timeout(3000)]

ROOT = Path(__file__).resolve().parents[2]


def test_short_real_node_chaos_finds_no_mismatch(tmp_path):
    argv = [sys.executable, str(ROOT / "bench" / "chaos.py"), "--nodes", "real", "--profile", "short",
            "--out", str(tmp_path)]
    if os.environ.get("STOKER_CHAOS_SEED"):
        argv += ["--seed", os.environ["STOKER_CHAOS_SEED"]]
    log = tmp_path / "chaos.log"          # tail -f it to follow the run
    with log.open("w") as out:
        proc = subprocess.run(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True, timeout=2900)
    print(log.read_text()[-20000:])
    result = json.loads((tmp_path / "chaos-real-short.json").read_text())
    kinds = {r["kind"] for r in result["table"]}
    assert {"sigkill_trainer", "container_killed", "node_lost", "operator_killed", "network_cut"} <= kinds, kinds
    assert result["failures"] == [], f"seed {result['seed']}: {result['failures']}"
    cuts = [s for j in result["jobs"] for s in j["samples"] if s["kind"] == "network_cut"]
    for s in cuts:
        print(f"network cut of {s['pod']} for {s['cut_s']:.1f} s: healed {s['healed']}, "
              f"restarted {s['restarted']} (blamed on {s.get('caused')}, detected after {s.get('detect_s')} s)")
    assert cuts and all(s["hit"] and s["healed"] for s in cuts), cuts
    assert proc.returncode == 0


def test_a_network_cut_drops_all_but_loopback_in_the_namespace_only_and_heals():
    """bench/chaos_faults_real.iptables_cut on a namespace of its own: the rules go in and
    out of that namespace, the host's rules are untouched."""
    import uuid

    from bench.chaos_faults_real import iptables_cut

    def rules(*ns: str) -> str:
        return subprocess.run([*ns, "iptables", "-S"], capture_output=True, text=True, check=True).stdout

    name = f"cut-{uuid.uuid4().hex[:6]}"
    host = rules()
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            assert iptables_cut(fd, "-I") == (True, "")
            inside = rules("ip", "netns", "exec", name)
            assert "-A INPUT ! -i lo -j DROP" in inside and "-A OUTPUT ! -o lo -j DROP" in inside, inside
            assert rules() == host
            assert iptables_cut(fd, "-D") == (True, "")
            assert "DROP" not in rules("ip", "netns", "exec", name)
        finally:
            os.close(fd)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)
