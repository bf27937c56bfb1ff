// Command weave-cni is the CNI plugin binary. This build answers VERSION; the network verbs
// arrive with the plugin package (ADD, DEL, CHECK, STATUS, GC) and until then fail with a
// CNI error that says so, rather than pretending to have attached anything.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	wversion "github.com/weavemesh/weave/internal/version"
)

func unavailable(*skel.CmdArgs) error {
	return types.NewError(types.ErrInternal, "weave-cni: network verbs are not in this build yet",
		"this weave-cni only answers VERSION; install a release that includes the CNI plugin")
}

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{Add: unavailable, Del: unavailable, Check: unavailable},
		version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"), "weave-cni "+wversion.String())
}
