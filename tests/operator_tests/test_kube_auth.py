"""The operator sends a token from a kubeconfig or the in-cluster ServiceAccount,
whichever key the kubernetes client keeps it under."""
from kubernetes import client

from stoker.operator.kube import authorization_header


def _cfg(api_key: dict, prefix: dict) -> client.Configuration:
    cfg = client.Configuration()
    cfg.api_key = api_key
    cfg.api_key_prefix = prefix
    return cfg


def test_bearer_token_key_of_newer_clients():
    assert authorization_header(_cfg({"BearerToken": "abc"}, {"BearerToken": "Bearer"})) == "Bearer abc"


def test_bearer_token_without_prefix_gets_one():
    assert authorization_header(_cfg({"BearerToken": "abc"}, {})) == "Bearer abc"


def test_authorization_key_of_older_clients():
    assert authorization_header(_cfg({"authorization": "Bearer xyz"}, {})) == "Bearer xyz"


def test_client_certificates_only_means_no_header():
    assert authorization_header(_cfg({}, {})) is None
