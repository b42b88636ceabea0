//go:build tools

// Package tools pins the CoreDNS command this module builds (the cluster DNS of real nodes).
package tools

import _ "github.com/coredns/coredns"
