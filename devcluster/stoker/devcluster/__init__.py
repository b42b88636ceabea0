"""The local development cluster: a real control plane (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler built from pinned Go modules), MinIO for S3,
kwok for simulated GPU nodes, and the process node agent (``nodeagent``) that runs
pods as local processes. Dev tooling that ships with the distribution so that
``pip install stoker && stoker cluster up`` works outside a checkout; the tests use it
like any user. Not used by the operator or the workers."""
