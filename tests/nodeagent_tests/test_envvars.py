"""The container environment is built the way the kubelet builds it."""
import base64

import pytest

from stoker.devcluster.nodeagent.envvars import EnvError, command_line, container_env, expand

POD = {
    "metadata": {"name": "p1", "namespace": "ns1", "uid": "u-1",
                 "labels": {"app": "web"}, "annotations": {"note": "hi"}},
    "spec": {"nodeName": "n1", "serviceAccountName": "sa1"},
    "status": {"podIP": "127.9.0.2", "hostIP": "127.9.0.1"},
}
SECRET = {"data": {"token": base64.b64encode(b"s3cr3t").decode(), "USER": base64.b64encode(b"bob").decode()}}
CM = {"data": {"mode": "fast", "LEVEL": "3", "bad key": "x"}}


def lookup(table):
    return lambda ns, name: table.get((ns, name))


def env_of(container, secrets=None, cms=None, **kw):
    return container_env(POD, container, get_secret=lookup(secrets or {}),
                         get_configmap=lookup(cms or {}), **kw)


@pytest.mark.parametrize("text,want", [
    ("$(A)", "x"), ("$$(A)", "$(A)"), ("$(MISSING)", "$(MISSING)"), ("$(A", "$(A"),
    ("a$b", "a$b"), ("$", "$"), ("$(A)-$(B)", "x-y"), ("$$$(A)", "$x"), ("$()", "$()"),
])
def test_expand_follows_kubernetes_rules(text, want):
    assert expand(text, {"A": "x", "B": "y"}) == want


def test_field_refs():
    env = env_of({"name": "c", "env": [
        {"name": n, "valueFrom": {"fieldRef": {"fieldPath": p}}} for n, p in [
            ("NAME", "metadata.name"), ("NS", "metadata.namespace"), ("UID", "metadata.uid"),
            ("APP", "metadata.labels['app']"), ("NOTE", "metadata.annotations['note']"),
            ("IP", "status.podIP"), ("HOST", "status.hostIP"), ("NODE", "spec.nodeName"),
            ("SA", "spec.serviceAccountName")]]})
    assert env == {"NAME": "p1", "NS": "ns1", "UID": "u-1", "APP": "web", "NOTE": "hi",
                   "IP": "127.9.0.2", "HOST": "127.9.0.1", "NODE": "n1", "SA": "sa1"}


def test_values_expand_earlier_variables_and_later_entries_win():
    env = env_of({"name": "c", "env": [
        {"name": "A", "value": "one"}, {"name": "B", "value": "$(A)-two"},
        {"name": "A", "value": "three"}, {"name": "C", "value": "$(NOPE)"}]}, base={"HOME": "/h"})
    assert env == {"HOME": "/h", "A": "three", "B": "one-two", "C": "$(NOPE)"}


def test_secret_and_configmap_refs_and_env_from():
    secrets, cms = {("ns1", "s"): SECRET}, {("ns1", "cm"): CM}
    env = env_of({"name": "c", "envFrom": [{"configMapRef": {"name": "cm"}},
                                           {"secretRef": {"name": "s"}, "prefix": "S_"}],
                  "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
                          {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "mode"}}},
                          {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k",
                                                                         "optional": True}}}]},
                 secrets, cms)
    assert env == {"mode": "fast", "LEVEL": "3", "S_token": "s3cr3t", "S_USER": "bob",
                   "TOKEN": "s3cr3t", "MODE": "fast"}  # "bad key" is not a valid name: skipped


def test_missing_required_refs_name_the_object_and_the_fix():
    with pytest.raises(EnvError, match=r'secret "gone" not found.*optional: true'):
        env_of({"name": "c", "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k"}}}]})
    with pytest.raises(EnvError, match=r'key "nokey" not found in configmap "cm"'):
        env_of({"name": "c", "env": [{"name": "T", "valueFrom": {
            "configMapKeyRef": {"name": "cm", "key": "nokey"}}}]}, cms={("ns1", "cm"): CM})
    with pytest.raises(EnvError, match='configmap "x" not found'):
        env_of({"name": "c", "envFrom": [{"configMapRef": {"name": "x"}}]})
    assert env_of({"name": "c", "envFrom": [{"configMapRef": {"name": "x", "optional": True}}]}) == {}


def test_resource_field_ref():
    c = {"name": "c", "resources": {"limits": {"memory": "1Gi"}, "requests": {"cpu": "250m"}},
         "env": [{"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                 {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu"}}},
                 {"name": "LCPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}}]}
    assert env_of(c, node_allocatable={"cpu": "32"}) == {"MEM": "1024", "CPU": "1", "LCPU": "32"}


def test_command_line_expands_and_requires_a_command():
    assert command_line({"name": "c", "command": ["echo", "$(A)"], "args": ["$(B)", "$$(A)"]},
                        {"A": "1", "B": "2"}) == ["echo", "1", "2", "$(A)"]
    with pytest.raises(EnvError, match="ignores images, so set command"):
        command_line({"name": "c", "image": "busybox", "args": ["x"]}, {})
