package daemon

import (
	"github.com/weavemesh/weave/mesh"
)

// dataPlane wires the router (MAC learning) and the overlays (sleeve, fastdp) between the
// TAP on the bridge and the underlay. This first cut carries no frames yet: connections are
// established as soon as the mesh handshake completes.
type dataPlane struct {
	d *Daemon
}

func (d *Daemon) newDataPlane() (*dataPlane, error) { return &dataPlane{d: d}, nil }

// configureMesh lets the data plane hook into connection setup before the mesh starts.
func (dp *dataPlane) configureMesh(*mesh.Config) {}

// start runs the data plane on top of the started mesh.
func (dp *dataPlane) start(*mesh.Router) error { return nil }

// close stops the data plane; idempotent.
func (dp *dataPlane) close() error { return nil }
