"""Checkpoint-test fixtures on top of the root ones (``cluster``, ``bucket``)."""
import pytest


@pytest.fixture
def s3_env(cluster, monkeypatch):
    """The cluster's MinIO endpoint and credentials in this process's environment."""
    for key, value in cluster.s3_env().items():
        monkeypatch.setenv(key, value)
    return cluster


@pytest.fixture
def s3_uri(s3_env, bucket):
    return f"s3://{bucket}/ckpt"


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.cluster)])
def uri(request, tmp_path):
    """A checkpoint root: a local directory, and (with the cluster) an S3 prefix."""
    if request.param == "local":
        return str(tmp_path / "ckpt")
    return request.getfixturevalue("s3_uri")
