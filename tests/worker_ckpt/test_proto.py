"""The committed generated gRPC code is what the .proto generates."""
import re
from pathlib import Path

import pytest

from stoker.common.proto import generate

pytest.importorskip("grpc_tools", reason="grpcio-tools (dev extra) regenerates the contract")

HERE = Path(generate.__file__).parent


def _normalize(text: str) -> str:
    # Tool versions appear in headers and runtime checks; the contract is the rest.
    text = re.sub(r"# Protobuf Python Version: .*", "", text)
    text = re.sub(r"GRPC_GENERATED_VERSION = '.*'", "", text)
    return re.sub(r"ValidateProtobufRuntimeVersion\([^)]*\)", "", text)


def test_committed_code_matches_proto(tmp_path):
    generate.generate(tmp_path)
    for name in generate.OUTPUTS:
        fresh, committed = (tmp_path / name).read_text(), (HERE / name).read_text()
        assert _normalize(fresh) == _normalize(committed), (
            f"{name} is stale: run `python -m stoker.common.proto.generate` and commit the result")


def test_grpc_module_imports_pb2_from_package():
    from stoker.common.proto import stoker_pb2, stoker_pb2_grpc

    assert stoker_pb2_grpc.HeartbeatStub
    assert "from stoker.common.proto import stoker_pb2" in (HERE / "stoker_pb2_grpc.py").read_text()
    assert stoker_pb2.DESCRIPTOR.package == "stoker.v1"
    assert [m.name for m in stoker_pb2.DESCRIPTOR.services_by_name["Heartbeat"].methods] == ["Stream", "LauncherAlive"]
