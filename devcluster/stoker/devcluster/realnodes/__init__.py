"""Real Kubernetes nodes for the local cluster: kubelet + containerd + kube-proxy per node,
each in a network namespace of its own (see README.md, "Real nodes")."""
