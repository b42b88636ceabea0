"""Regenerate api_pb2.py / api_pb2_grpc.py from api.proto (needs grpcio-tools, the dev extra):

    python -m stoker.devcluster.realnodes.deviceplugin.generate
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]   # .../devcluster
PROTO = "stoker/devcluster/realnodes/deviceplugin/api.proto"

if __name__ == "__main__":
    import grpc_tools
    from grpc_tools import protoc

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    raise SystemExit(protoc.main(["protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={ROOT}",
                                  f"--grpc_python_out={ROOT}", PROTO]))
