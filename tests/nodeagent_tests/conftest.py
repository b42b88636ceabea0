"""Fixtures for the process node agent tests: a process node per test module
(unique name, so parallel sessions never share one) and the ``pods`` helper."""
from __future__ import annotations

import uuid

import pytest

from tests.nodeagent_tests.helpers import Pods


@pytest.fixture(scope="module")
def process_node(cluster):
    """A running process node agent; its Node is Ready. Yields the node name."""
    name = f"pn-{uuid.uuid4().hex[:8]}"
    cluster.start_process_node(name, gpus=1)
    yield name
    cluster.stop_process_node(name)
    cluster.delete_nodes([name])


@pytest.fixture
def pods(cluster, namespace):
    return Pods(cluster, namespace)
