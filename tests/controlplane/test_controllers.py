"""The controller-manager really runs: garbage collection of dependents."""
import time

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.cluster


def test_dependent_is_garbage_collected_after_owner_is_deleted(kube, namespace):
    owner = kube.core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner")))
    ref = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner",
                                  uid=owner.metadata.uid)
    kube.core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="dependent",
                                                                   owner_references=[ref])))
    kube.core.delete_namespaced_config_map("owner", namespace)  # background propagation

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            kube.core.read_namespaced_config_map("dependent", namespace)
        except ApiException as exc:
            assert exc.status == 404
            return
        time.sleep(0.2)
    pytest.fail("the dependent ConfigMap still exists 60s after its owner was deleted: "
                "the garbage collector is not running")
