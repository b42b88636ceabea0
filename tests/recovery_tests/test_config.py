"""Recovery settings: STOKER_OPERATOR_* variables and `stoker operator run` flags agree."""
from __future__ import annotations

import argparse

import pytest

from stoker.operator import cli, config


def test_recovery_settings_round_trip_through_the_environment():
    c = config.Config(heartbeat_address="10.0.0.1:50051", heartbeat_listen="0.0.0.0:7000",
                      heartbeat_interval_seconds=1.5, startup_timeout_seconds=90, max_infra_restarts=7,
                      node_report_after=4, cordon_after=5)
    assert config.load(config.to_env(c)) == c


def test_recovery_flags_map_onto_the_config():
    p = argparse.ArgumentParser()
    cli.add_parser(p.add_subparsers())
    args = p.parse_args(["operator", "run", "--heartbeat-address", "10.0.0.1:50051", "--heartbeat-interval", "2",
                         "--cordon-after", "3", "--max-infra-restarts", "9"])
    c = cli.config_from_args(args)
    assert (c.heartbeat_address, c.heartbeat_interval_seconds, c.cordon_after, c.max_infra_restarts) == (
        "10.0.0.1:50051", 2.0, 3, 9)


def test_a_bad_number_names_the_variable():
    with pytest.raises(ValueError, match="STOKER_OPERATOR_CORDON_AFTER"):
        config.load({"STOKER_OPERATOR_CORDON_AFTER": "many"})
