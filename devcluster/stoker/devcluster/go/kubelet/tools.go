//go:build tools

// Package tools pins the node commands this module builds: the kubelet and kube-proxy, from
// the same k8s.io/kubernetes version as the control plane (../kubernetes). A module of its
// own so that the node's extra dependencies (cadvisor, runc's libcontainer, ...) do not change
// the control plane's cache key.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
