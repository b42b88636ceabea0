"""The CLI finds the cluster without the `kubernetes` package (stoker/cli/kubeconfig.py),
reading kubeconfigs as kubectl does. Pure tests on files, plus one against the local API
server with an exec credential plugin that hands out a ServiceAccount token."""
from __future__ import annotations

import base64
import json
import os
import stat
import sys

import pytest
import yaml

from stoker.cli import kubeconfig as K


def write(path, doc) -> str:
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def config(server="https://a:6443", user=None, ns=None, name="a") -> dict:
    return {"current-context": name,
            "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority": "ca.crt"}}],
            "users": [{"name": name, "user": user or {"token": f"tok-{name}"}}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name, **({"namespace": ns} if ns else {})}}]}


def test_kubeconfig_list_merges_first_file_wins_and_paths_are_relative_to_their_file(tmp_path, monkeypatch):
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "ca.crt").write_text("x")
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "ca.crt").write_text("y")
    a = write(tmp_path / "one" / "config", config(ns="team-a"))
    b_doc = config(server="https://b:6443", name="b")
    b_doc["clusters"].append({"name": "a", "cluster": {"server": "https://shadowed"}})
    b = write(tmp_path / "two" / "config", b_doc)
    monkeypatch.setenv("KUBECONFIG", f"{a}{os.pathsep}{b}")
    conn = K.load()
    assert (conn.server, conn.namespace, conn.authorization()) == ("https://a:6443", "team-a", "Bearer tok-a")
    assert conn.ca_file == str(tmp_path / "one" / "ca.crt")
    other = K.load(context="b")
    assert other.server == "https://b:6443" and other.ca_file == str(tmp_path / "two" / "ca.crt")
    assert other.namespace == "default"
    with pytest.raises(K.ConfigError, match=r"context 'nope' is not in the kubeconfig \(contexts: a, b\)"):
        K.load(context="nope")


def test_data_fields_go_to_private_files_and_token_files_are_reread(tmp_path):
    tok = tmp_path / "token"
    tok.write_text("first")
    doc = config(user={"client-certificate-data": base64.b64encode(b"CERT").decode(),
                       "client-key-data": base64.b64encode(b"KEY").decode(), "tokenFile": "token"})
    doc["clusters"][0]["cluster"] = {"server": "https://a", "certificate-authority-data": base64.b64encode(b"CA").decode()}
    conn = K.load(write(tmp_path / "config", doc))
    assert open(conn.ca_file, "rb").read() == b"CA" and open(conn.cert_file, "rb").read() == b"CERT"
    assert stat.S_IMODE(os.stat(conn.key_file).st_mode) == 0o600
    assert conn.authorization() == "Bearer first"
    tok.write_text("rotated")
    assert conn.authorization() == "Bearer rotated"


def test_exec_plugin_token_is_used_and_a_failing_plugin_is_named(tmp_path):
    (tmp_path / "ca.crt").write_text("x")
    plugin = tmp_path / "plugin.py"
    plugin.write_text("import json, os; print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', "
                      "'kind': 'ExecCredential', 'status': {'token': os.environ['WHO']}}))")
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
                     "args": [str(plugin)], "env": [{"name": "WHO", "value": "from-plugin"}]}}
    conn = K.load(write(tmp_path / "config", config(user=user)))
    assert conn.authorization() == "Bearer from-plugin"
    user["exec"]["args"] = ["-c", "import sys; sys.exit('no login')"]
    user["exec"]["installHint"] = "install the cloud CLI"
    with pytest.raises(K.ConfigError, match="exited 1: no login"):
        K.load(write(tmp_path / "config", config(user=user)))


def test_nothing_configured_is_none_and_a_missing_current_context_says_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert K.load() is None
    doc = config()
    doc["current-context"] = ""
    with pytest.raises(K.ConfigError, match="--context"):
        K.load(write(tmp_path / "config", doc))


@pytest.mark.cluster
def test_an_exec_plugin_authenticates_the_cli_against_the_api_server(cluster, namespace, tmp_path, capsys):
    from stoker.cli.main import main

    cluster.kubectl("create", "serviceaccount", "oncall", "-n", namespace)
    token = cluster.kubectl("create", "token", "oncall", "-n", namespace, "--duration=1h").stdout.strip()
    plugin = tmp_path / "plugin.py"
    plugin.write_text("import json; print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', "
                      f"'kind': 'ExecCredential', 'status': {{'token': {token!r}}}}}))")
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    doc = {"current-context": "sa", "clusters": [{"name": "local", "cluster": admin["clusters"][0]["cluster"]}],
           "users": [{"name": "sa", "user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1",
                                                      "command": sys.executable, "args": [str(plugin)]}}}],
           "contexts": [{"name": "sa", "context": {"cluster": "local", "user": "sa", "namespace": namespace}}]}
    kc = write(tmp_path / "config", doc)
    capsys.readouterr()
    rc = main(["get", "--kubeconfig", kc])
    err = capsys.readouterr().err
    # authenticated (not 401) as the ServiceAccount, which has no RBAC grant: forbidden, naming it
    assert rc == 1 and f"system:serviceaccount:{namespace}:oncall" in err, err
