package netdev

import (
	"net"
	"net/netip"
)

// AttachSpec describes an interface to put into a network namespace, on the bridge.
type AttachSpec struct {
	// NetnsPath is the namespace to attach (/run/netns/NAME, /proc/PID/ns/net, ...).
	NetnsPath string
	// IfName is the interface name inside the namespace (ethwe for weavectl, CNI_IFNAME for CNI).
	IfName string
	// HostIfName is the host end of the veth, on the bridge.
	HostIfName string
	// Bridge to attach to.
	Bridge string
	// MTU of both ends.
	MTU int
	// CIDRs are added to the interface (already present ones are kept).
	CIDRs []netip.Prefix
	// Routes are added through the interface (e.g. the allocation range when a CIDR does
	// not cover it).
	Routes []netip.Prefix
	// Hairpin lets a container reach itself through a service address on the bridge.
	Hairpin bool
}

// Attached is what Attach left in place.
type Attached struct {
	MAC   net.HardwareAddr
	CIDRs []netip.Prefix
}

// Attacher connects namespaces to the bridge and gives the host an address on it.
type Attacher interface {
	// Attach creates (or completes, when it exists) the interface and its addresses, then
	// announces them with gratuitous ARP.
	Attach(spec AttachSpec) (Attached, error)
	// Detach removes cidrs from the interface; with no cidrs it removes the interface.
	// A namespace or interface that is gone already is not an error.
	Detach(netnsPath, ifName string, cidrs []netip.Prefix) error
	// Inspect reports the interface ifName in the namespace: ok is false when the namespace
	// or the interface is gone. Reconciliation after a crash uses it.
	Inspect(netnsPath, ifName string) (a Attached, ok bool, err error)
	// Expose adds cidr to the bridge; Hide removes it (absent: not an error).
	Expose(bridge string, cidr netip.Prefix) error
	Hide(bridge string, cidr netip.Prefix) error
}
