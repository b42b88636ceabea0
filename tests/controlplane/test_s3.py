"""MinIO behaves like S3: data survives a restart; a wrong secret is refused."""
import os

import boto3
import pytest
from botocore.exceptions import ClientError

from stoker.common import env

pytestmark = pytest.mark.cluster


def test_object_survives_minio_restart(cluster, s3, bucket):
    data = os.urandom(3 * 1024 * 1024 + 17)
    s3.put_object(Bucket=bucket, Key="ckpt/step-1/shard-0", Body=data)

    cluster.restart_s3()

    got = s3.get_object(Bucket=bucket, Key="ckpt/step-1/shard-0")["Body"].read()
    assert got == data


def test_wrong_secret_key_is_refused(cluster, bucket):
    e = cluster.s3_env()
    bad = boto3.client("s3", endpoint_url=e[env.S3_ENDPOINT], region_name=e[env.S3_REGION],
                       aws_access_key_id=e[env.S3_ACCESS_KEY],
                       aws_secret_access_key=e[env.S3_SECRET_KEY] + "x")
    with pytest.raises(ClientError) as info:
        bad.put_object(Bucket=bucket, Key="x", Body=b"x")
    err = info.value.response
    assert err["Error"]["Code"] == "SignatureDoesNotMatch"
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_s3_secret_holds_the_credentials(cluster, kube, namespace):
    import base64

    cluster.create_s3_secret(namespace)
    secret = kube.core.read_namespaced_secret("stoker-s3", namespace)
    decoded = {k: base64.b64decode(v).decode() for k, v in secret.data.items()}
    assert decoded == cluster.s3_env()
