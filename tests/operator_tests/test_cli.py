"""`stoker operator run` flags become the operator's STOKER_OPERATOR_* settings."""
from __future__ import annotations

import argparse

import pytest

from stoker.operator import cli, config


def parse(*argv):
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["operator", *argv])


def test_run_flags_round_trip_into_the_environment():
    args = parse("run", "--namespace", "a", "--namespace", "b", "--rendezvous-port", "1234",
                 "--rendezvous-advertise-address", "10.0.0.7", "--peering", "stoker", "--resync-seconds", "2",
                 "--metrics-port", "0", "--launcher", "torchrun")
    cfg = cli.config_from_args(args)
    assert cfg.namespaces == ("a", "b") and not cfg.clusterwide
    assert config.load(config.to_env(cfg)) == cfg


def test_all_namespaces_and_namespace_are_exclusive():
    assert cli.config_from_args(parse("run", "--all-namespaces")).clusterwide
    with pytest.raises(SystemExit):
        parse("run", "--all-namespaces", "--namespace", "x")


def test_stdlib_operator_module_is_not_shadowed():
    import operator

    assert hasattr(operator, "itemgetter")
