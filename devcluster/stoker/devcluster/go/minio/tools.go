//go:build tools

// Package tools pins the minio command this module builds.
package tools

import _ "github.com/minio/minio"
