// Command weavectl controls the local router: launch, status, connect, stop and more. It
// talks to weaver only through the control API socket.
package main

import (
	"os"

	"github.com/weavemesh/weave/cmd/weavectl/cli"
)

func main() {
	os.Exit(cli.Run(os.Args[1:], cli.OSEnv()))
}
