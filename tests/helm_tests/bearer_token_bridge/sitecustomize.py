"""Test-only bridge for a known operator bug, put on PYTHONPATH of the operator process
in test_chart_install.py only.

kubernetes>=36 stores a bearer token (kubeconfig token, in-cluster ServiceAccount token)
under ``Configuration.api_key['BearerToken']``; stoker.operator reads
``api_key['authorization']`` (main.login, kube.Kube.request), so with a ServiceAccount
token it sends no credentials. This copies the token to the old key, so the RBAC test can
prove the chart's grants are sufficient while the bug is open. Remove it with the fix;
test_operator_authenticates_with_a_service_account_token tracks the bug itself.
"""
try:
    from kubernetes.config import kube_config
except ImportError:  # not the operator's interpreter
    kube_config = None

if kube_config is not None:
    _original = kube_config.KubeConfigLoader._set_config

    def _set_config(self, client_configuration):
        _original(self, client_configuration)
        token = client_configuration.api_key.get("BearerToken")
        if token and "authorization" not in client_configuration.api_key:
            client_configuration.api_key["authorization"] = token

    kube_config.KubeConfigLoader._set_config = _set_config
