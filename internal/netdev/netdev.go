package netdev

import (
	"errors"
	"net"
)

// ErrNotFound is returned (wrapped) when a link does not exist.
var ErrNotFound = errors.New("link not found")

// ErrNotNetns is returned (wrapped) for a target path that is not a network namespace.
var ErrNotNetns = errors.New("not a network namespace")

// Links is the host plumbing the daemon manages. The Linux implementation talks netlink in
// the caller's network namespace; Fake records calls for tests without root.
type Links interface {
	// EnsureBridge creates the bridge if missing (with mac as its address, so the bridge's
	// MAC stays stable across restarts), sets mtu and brings it up.
	EnsureBridge(name string, mac net.HardwareAddr, mtu int) error
	// EnsureTAP creates a persistent TAP device if missing, enslaves it to bridge, sets mtu
	// and brings it up.
	EnsureTAP(name, bridge string, mtu int) error
	// DeleteBridge removes every port of the bridge (TAP, container veths, whose other ends
	// go with them) and then the bridge; a missing bridge is not an error.
	DeleteBridge(name string) error
	// Delete removes a link; a missing link is not an error.
	Delete(name string) error
	// Exists reports whether a link exists.
	Exists(name string) (bool, error)
	// UnderlayMTU returns the MTU of the interface of the default route, or of the first
	// up non-loopback interface when there is no default route.
	UnderlayMTU() (int, error)
	Attacher
}
