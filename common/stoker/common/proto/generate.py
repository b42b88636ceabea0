"""Regenerate stoker_pb2.py / stoker_pb2_grpc.py from stoker.proto.

    python -m stoker.common.proto.generate          # rewrite the committed files
    python -m stoker.common.proto.generate --out D  # write to D (tests compare)

Needs grpcio-tools (the ``dev`` extra). Run from anywhere.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMMON_ROOT = HERE.parents[2]  # .../common (holds stoker/common/proto/stoker.proto)
PROTO = "stoker/common/proto/stoker.proto"
OUTPUTS = ("stoker_pb2.py", "stoker_pb2_grpc.py", "stoker_pb2.pyi")


def generate(out_dir: Path) -> list[Path]:
    import grpc_tools
    from grpc_tools import protoc

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        rc = protoc.main([
            "grpc_tools.protoc", f"-I{COMMON_ROOT}", f"-I{include}",
            f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", PROTO,
        ])
        if rc != 0:
            raise RuntimeError(f"protoc failed with exit code {rc} for {COMMON_ROOT / PROTO}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in OUTPUTS:
            dst = out_dir / name
            shutil.copyfile(Path(tmp) / "stoker/common/proto" / name, dst)
            written.append(dst)
        return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args(argv)
    for p in generate(args.out):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
