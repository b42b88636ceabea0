"""Root fixtures: the local control plane + S3 server, and per-test isolation on it.

- ``cluster`` (session): one LocalCluster per pytest session (per xdist worker), in a
  tmp dir, started on first use, stopped at the end. With
  ``STOKER_TEST_CLUSTER_DIR=/path`` the cluster in that dir is reused (started if
  needed) and left running, which makes iterating on tests fast:
  ``stoker cluster up --dir /path`` once, then run pytest with the variable set.
- ``kube`` (session): kubernetes client API objects bound to the cluster.
- ``namespace`` (function): a fresh namespace (with its default ServiceAccount),
  deleted afterwards.
- ``s3`` (session): a boto3 S3 client for MinIO; ``bucket`` (function): a fresh
  bucket, emptied and deleted afterwards.

Subfolders add their own conftest.py; keep this one about the cluster.
"""
from __future__ import annotations

import os
import re
import time
import uuid
from types import SimpleNamespace

import pytest


def _unique(prefix: str, request: pytest.FixtureRequest, limit: int) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")
    suffix = uuid.uuid4().hex[:6]
    return f"{prefix}{base[: limit - len(prefix) - len(suffix) - 1].rstrip('-')}-{suffix}"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    from stoker.devcluster.local import LocalCluster

    shared = os.environ.get("STOKER_TEST_CLUSTER_DIR")
    if shared:
        c = LocalCluster(shared).up()
        yield c
        return
    c = LocalCluster(tmp_path_factory.mktemp("cluster"), die_with_parent=True)
    try:
        c.up()
        yield c
    finally:
        c.down()


@pytest.fixture(scope="session")
def kube(cluster):
    """``kube.core``, ``kube.apps``, ``kube.batch``, ``kube.rbac``, ``kube.coordination``,
    ``kube.custom`` (CustomObjectsApi), ``kube.apiext``, ``kube.api_client``."""
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    yield SimpleNamespace(
        api_client=api_client,
        core=client.CoreV1Api(api_client),
        apps=client.AppsV1Api(api_client),
        batch=client.BatchV1Api(api_client),
        rbac=client.RbacAuthorizationV1Api(api_client),
        coordination=client.CoordinationV1Api(api_client),
        custom=client.CustomObjectsApi(api_client),
        apiext=client.ApiextensionsV1Api(api_client),
    )
    api_client.close()


@pytest.fixture
def namespace(request, cluster, kube):
    """A fresh namespace whose `default` ServiceAccount exists (pods can be created)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    name = _unique("t-", request, 63)
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    deadline = time.monotonic() + 30
    while True:
        try:
            kube.core.read_namespaced_service_account("default", name)
            break
        except ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    yield name
    try:
        kube.core.delete_namespace(name, propagation_policy="Background")
    except ApiException as exc:
        if exc.status != 404:
            raise


@pytest.fixture(scope="session")
def s3(cluster):
    import boto3
    from botocore.config import Config

    from stoker.common import env as stoker_env

    e = cluster.s3_env()
    return boto3.client(
        "s3",
        endpoint_url=e[stoker_env.S3_ENDPOINT],
        aws_access_key_id=e[stoker_env.S3_ACCESS_KEY],
        aws_secret_access_key=e[stoker_env.S3_SECRET_KEY],
        region_name=e[stoker_env.S3_REGION],
        config=Config(retries={"max_attempts": 3, "mode": "standard"}),
    )


@pytest.fixture
def bucket(request, s3):
    """A fresh, empty bucket; emptied and deleted after the test."""
    name = _unique("t-", request, 63)
    s3.create_bucket(Bucket=name)
    yield name
    paginator = s3.get_paginator("list_object_versions")
    try:
        for page in paginator.paginate(Bucket=name):
            objs = [{"Key": o["Key"], "VersionId": o["VersionId"]}
                    for o in page.get("Versions", []) + page.get("DeleteMarkers", [])]
            if objs:
                s3.delete_objects(Bucket=name, Delete={"Objects": objs, "Quiet": True})
        s3.delete_bucket(Bucket=name)
    except s3.exceptions.NoSuchBucket:
        pass
