"""checkpoint/s3.py and the shard reader (s3client.CrtGets) use one private part of s3torchconnector
(``_s3client.S3Client``):
the installed version must be the minor version it was checked with, the pin in
pyproject.toml must hold it there, and the calls s3.py makes must exist as it calls them."""
from __future__ import annotations

import importlib.metadata as md
import inspect
import pathlib
import tomllib

from packaging.specifiers import SpecifierSet

from stoker.worker.checkpoint import s3

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_the_pin_admits_only_the_checked_minor_version():
    worker = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["worker"]
    [req] = [r for r in worker if r.startswith("s3torchconnector")]
    spec = SpecifierSet(req.split("]", 1)[1])
    checked = s3.S3TORCHCONNECTOR_CHECKED
    assert f"{checked}.0" in spec and f"{checked}.9" in spec
    major, minor = map(int, checked.split("."))
    assert f"{major}.{minor + 1}.0" not in spec and f"{major + 1}.0.0" not in spec
    installed = md.version("s3torchconnector")
    assert installed.startswith(checked + "."), f"s3torchconnector {installed} is not the checked {checked}.x"


def test_the_private_client_has_the_calls_s3_py_makes():
    from s3torchconnector._s3client import S3Client

    params = inspect.signature(S3Client).parameters
    assert list(params)[0] == "region" and {"endpoint", "s3client_config"} <= set(params)
    for method in ("put_object", "get_object"):
        assert list(inspect.signature(getattr(S3Client, method)).parameters)[1:3] == ["bucket", "key"]
    client = s3.crt_client(max_attempts=2)  # constructs without touching the network
    assert isinstance(client, S3Client)
    # the shard reader's GET (s3client.CrtGets): one stream, no HEAD, optional byte range
    assert list(inspect.signature(S3Client._get_object_stream).parameters) == ["self", "bucket", "key", "start", "end"]
