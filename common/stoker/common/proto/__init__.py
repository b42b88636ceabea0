"""Generated gRPC contract (package ``stoker.v1``); source: ``stoker.proto``.

Regenerate with ``python -m stoker.common.proto.generate`` after editing the
.proto; ``tests/worker_ckpt/test_proto.py`` fails when the committed files are stale.
"""
