//go:build tools

// Package tools pins the Kubernetes components scripts/install-kube builds, so `go mod tidy`
// keeps their dependencies in go.mod/go.sum (etcd's main lives in cmd/etcd):
// kube-apiserver for the integration-test control plane, and the node's components
// (kubelet, kube-proxy, kube-controller-manager, kube-scheduler) for the single-node cluster
// harness (operator/overcommit/localcluster).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
