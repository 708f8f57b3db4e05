//go:build tools

// Package tools pins kube-apiserver, which scripts/install-kube builds, so `go mod tidy`
// keeps its dependencies in go.mod/go.sum (etcd's main lives in cmd/etcd).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
