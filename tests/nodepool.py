"""Process nodes for a test or a test folder: a labelled pool (``stoker.dev/test-pool``)
whose pods run as local processes. The one node-pool helper the fixtures share."""
from __future__ import annotations

import uuid

import pytest

POOL_LABEL = "stoker.dev/test-pool"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


class NodePool:
    """Nodes named ``<prefix>-<i>``, labelled ``POOL_LABEL=<label>`` (default: the prefix)."""

    def __init__(self, cluster, prefix: str, label: str | None = None) -> None:
        self.cluster = cluster
        self.prefix = prefix
        self.selector = {POOL_LABEL: label or prefix}
        self.names: list[str] = []

    def add(self, n: int, gpus: int = 0) -> list[str]:
        """Start n more nodes (one already running under a name is reused)."""
        new = [f"{self.prefix}-{len(self.names) + i}" for i in range(n)]
        running = set(self.cluster.process_nodes())
        for name in new:
            if name not in running:
                self.cluster.start_process_node(name, gpus=gpus, labels=self.selector)
            self.names.append(name)
        return new

    def close(self, delete: bool = True) -> None:
        """Stop the nodes; ``delete``: remove their Node objects too (a pool of one test)."""
        for name in self.names:
            self.cluster.stop_process_node(name)
        if delete and self.names:
            self.cluster.delete_nodes(self.names)


def session_pool(name: str, prefix: str, label: str, n: int, doc: str):
    """A session fixture: n process nodes ``<prefix>-<i>`` labelled ``label``, shared by a test
    folder and stopped at the end (their Node objects stay: a reused cluster finds them)."""
    def pool(cluster):
        p = NodePool(cluster, prefix, label=label)
        p.add(n)
        yield p.selector
        p.close(delete=False)

    pool.__doc__ = doc
    return pytest.fixture(scope="session", name=name)(pool)
