// Command etcd is the etcd server, built from go.etcd.io/etcd/server/v3 at the version the pinned
// Kubernetes release's own go.mod uses for its etcd client, so apiserver and etcd are a pair that
// upstream tests together. It only forwards to etcdmain; the wrapper exists so the build is a
// plain "go build" of a module kept in this repository, with a go.sum that pins every dependency.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
