"""The chart's alert rules and the dashboards' queries, checked by Prometheus' own
rule-file parser: tests/tools/promcheck is a small Go program over
github.com/prometheus/prometheus/model/rulefmt (what `promtool check rules` runs:
every expr through the PromQL parser, every label and annotation as a Go template),
built from the pinned Go module on first use and cached like the cluster's tools."""
from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml


@pytest.fixture(scope="session")
def promcheck() -> str:
    # built by `make tools` (tests/tools/build_promcheck.py); a no-op when cached
    from tests.tools.build_promcheck import promcheck_path

    return promcheck_path()


def check(promcheck: str, path) -> subprocess.CompletedProcess:
    return subprocess.run([promcheck, str(path)], capture_output=True, text=True, timeout=120)


def test_the_checker_rejects_a_broken_rule(promcheck, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [
        {"alert": "Broken", "expr": "time() - stoker_checkpoint_timestamp_seconds >", "labels": {"severity": "x"}},
        {"alert": "BadTemplate", "expr": "up == 0", "annotations": {"summary": "{{ $labels.job "}}]}]}))
    out = check(promcheck, bad)
    assert out.returncode != 0
    assert "Broken" in out.stderr or "unexpected end of input" in out.stderr, out.stderr
    assert "BadTemplate" in out.stderr or "template" in out.stderr, out.stderr


def test_the_charts_alert_rules_pass_prometheus_rule_checks(promcheck, render, tmp_path):
    objs = render({"metrics": {"prometheusRule": {"enabled": True}}})
    groups = objs.one("PrometheusRule", "stoker")["spec"]["groups"]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    out = check(promcheck, path)
    assert out.returncode == 0, out.stderr
    n = sum(len(g["rules"]) for g in groups)
    assert f"SUCCESS: {n} rules found" in out.stdout, out.stdout


def test_the_dashboards_queries_parse_as_promql(promcheck, render, tmp_path):
    cm = render({"metrics": {"dashboard": {"enabled": True}}}).one("ConfigMap", "stoker-dashboard")
    rules = []
    for key in ("stoker.json", "stoker-job.json"):
        for panel in json.loads(cm["data"][key])["panels"]:
            for t in panel["targets"]:
                expr = t["expr"].replace("$namespace", "team-a").replace("$trainingjob", "llm")
                rules.append({"record": f"stoker:dashboard_{len(rules)}", "expr": expr})
    path = tmp_path / "dashboards.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    out = check(promcheck, path)
    assert out.returncode == 0, out.stderr
    assert f"SUCCESS: {len(rules)} rules found" in out.stdout
    assert not [r for r in rules if re.search(r"\$\w", r["expr"])]  # every variable was substituted
