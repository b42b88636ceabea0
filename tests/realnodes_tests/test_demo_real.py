"""`make demo` as it runs by default: real nodes, the operator installed by Helm, the
trainer in the image built here; the same story and checks as tests/test_demo.py."""
from __future__ import annotations

import pytest

from tests.test_demo import check_summary, run_demo

pytestmark = [pytest.mark.realnodes, pytest.mark.cluster, pytest.mark.slow, pytest.mark.torch]


def test_make_demo_on_real_nodes_with_the_helm_installed_operator(tmp_path):
    summary = run_demo(tmp_path)
    assert summary["nodes"] == "real"
    assert summary["pod"]["node"].startswith("real-node-")
    check_summary(summary, tmp_path)
