// Command etcd is upstream etcd's main, built from go.etcd.io/etcd/server/v3 at the version
// k8s.io/kubernetes itself depends on (used when OVERCOMMIT_ETCD=build; see scripts/install-kube).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
