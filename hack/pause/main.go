// Command pause is the node's pod sandbox image: it holds a pod's namespaces and does nothing
// else until it is told to stop, like Kubernetes' own pause (build/pause, which is C). Built
// statically by hack/node.sh into an image FROM scratch, since no image may be pulled here.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
}
