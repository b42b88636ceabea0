"""Each operator setting is declared once (a field of stoker.operator.config.Config); the
flags, the environment names and the chart's values are derived from that declaration
and must agree with `stoker operator run`, the environment loader and charts/stoker."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import yaml

from stoker.operator import cli, config

CHART = Path(__file__).resolve().parents[2] / "charts" / "stoker"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
DEPLOYMENT = (CHART / "templates" / "deployment.yaml").read_text()
SETTINGS = config.settings()


def _sub(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]


def run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    return _sub(_sub(parser, "operator"), "run")


def value_at(path: str):
    node = VALUES
    for key in path.split("."):
        assert isinstance(node, dict) and key in node, f"charts/stoker/values.yaml has no {path}"
        node = node[key]
    return node


def chart_env() -> dict[str, str]:
    """STOKER_OPERATOR_* name -> its entry in templates/deployment.yaml (with the line
    before it, which may be the `{{- with .Values.X }}` that guards it)."""
    lines = DEPLOYMENT.splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(r"\s+- name: ", line)] + [len(lines)]
    out = {}
    for i, nxt in zip(starts, starts[1:]):
        m = re.match(r"\s+- name: (STOKER_OPERATOR_\w+)$", lines[i])
        if m:
            out[m.group(1)] = "\n".join(lines[i - 1:nxt])
    return out


def test_the_flags_of_stoker_operator_run_are_the_declared_ones():
    declared = {config.flag_of(f, s) for f, s in SETTINGS} - {None}
    actions = [a for a in run_parser()._actions if a.option_strings]
    flags = {o for a in actions for o in a.option_strings if o.startswith("--")}
    assert flags - {"--help", "--all-namespaces"} == declared
    by_dest = {a.dest: a for a in actions}
    for f, s in SETTINGS:
        if config.flag_of(f, s) is None:
            assert f.name not in by_dest
            continue
        a = by_dest[f.name]
        assert a.help == s.help, f.name
        assert a.default == ([] if f.name == "namespaces" else f.default), f.name


def test_every_setting_round_trips_through_its_environment_name_and_its_flag():
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    samples = {"int": "7", "float": "2.5", "str": "x-1"}
    for f, s in SETTINGS:
        kind = str(f.type).split(" |")[0]
        raw = ",".join(["a", "b"]) if kind.startswith("tuple") else s.choices[-1] if s.choices else samples[kind]
        cfg = config.load({config.env_name(f): raw})
        assert getattr(cfg, f.name) != f.default, f"{config.env_name(f)} is not read into {f.name}"
        assert config.load(config.to_env(cfg)) == cfg
        flag = config.flag_of(f, s)
        if flag is not None:
            argv = ["--namespace", "a", "--namespace", "b"] if kind.startswith("tuple") else [flag, raw]
            assert config.from_args(parser.parse_args(["operator", "run", *argv])) == cfg, flag


@pytest.mark.parametrize("field,s", SETTINGS, ids=[f.name for f, _ in SETTINGS])
def test_the_chart_passes_the_settings_it_declares_with_the_declared_defaults(field, s):
    env = chart_env()
    name = config.env_name(field)
    if s.chart is None:
        assert name not in env, f"the chart sets {name}, but Config.{field.name} declares no chart value"
        return
    assert name in env, f"Config.{field.name} declares chart={s.chart!r}; templates/deployment.yaml lacks {name}"
    if s.chart == config.COMPUTED:
        return
    assert f".Values.{s.chart}" in env[name], f"{name} is not set from .Values.{s.chart}: {env[name]}"
    want = s.chart_default if s.chart_default is not None else field.default
    got = value_at(s.chart)
    assert (got or None) == (want or None) if want in (None, "") else got == want, \
        f"values.yaml {s.chart}={got!r}, Config.{field.name} declares {want!r}"


def test_the_chart_sets_no_operator_variable_that_is_not_declared():
    declared = {config.env_name(f) for f, _ in SETTINGS}
    assert set(chart_env()) <= declared
    assert set(re.findall(r"STOKER_OPERATOR_\w+", DEPLOYMENT)) <= declared
