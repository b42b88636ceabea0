//go:build tools

// Package tools pins the Kubeflow training-operator manager this module builds
// (only for the side-by-side scale benchmark, bench/bench_operator_scale.py).
package tools

import _ "github.com/kubeflow/training-operator/cmd/training-operator.v1"
