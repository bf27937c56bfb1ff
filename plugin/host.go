package plugin

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// Host is the plumbing the plugin does on the node, in the plugin's own (the host's) network
// namespace and the container's. LinuxHost is the real one; FakeHost records state for tests.
type Host interface {
	// Bridge returns the bridge's MTU and addresses.
	Bridge(name string) (BridgeInfo, error)
	// IsOwnNetns reports whether netnsPath is the namespace the plugin runs in.
	IsOwnNetns(netnsPath string) (bool, error)
	// Attach creates the veth pair (or completes the one an earlier ADD made), addresses and
	// routes it, and announces the address with gratuitous ARP. An ifName in the namespace
	// (or a hostIfName) that is not that pair is refused with an error wrapping
	// ErrIfaceExists before anything is made. On any error Attach removes what it made
	// itself and nothing else.
	Attach(spec AttachSpec) (Attached, error)
	// Detach removes the veth pair by its host end hostIfName; an ifName in the namespace
	// that is not hostIfName's peer is left alone. Whatever is gone already (namespace,
	// interface) is not an error. netnsPath may be empty.
	Detach(netnsPath, ifName, hostIfName string) error
	// Check verifies the attachment against what ADD returned.
	Check(want Expected) error
	// Lock takes an exclusive lock shared by every plugin process on the node.
	Lock(path string) (unlock func(), err error)
}

// ErrIfaceExists: the container's interface name (or the host end's) is taken by an
// interface weave-cni did not make for this container.
var ErrIfaceExists = errors.New("interface exists already")

// BridgeInfo is what the plugin needs to know of the router's bridge.
type BridgeInfo struct {
	MTU   int
	Addrs []netip.Prefix
}

// AttachSpec describes one container interface.
type AttachSpec struct {
	NetnsPath  string
	IfName     string
	HostIfName string
	Bridge     string
	MTU        int
	Hairpin    bool
	CIDR       netip.Prefix
	// Routes are added in the container; a route with a gateway goes via it.
	Routes []*types.Route
}

// Attached is what Attach made.
type Attached struct {
	MAC     net.HardwareAddr
	HostMAC net.HardwareAddr
	// Routes are the routes in place through the interface: the spec's, less those whose
	// destination another interface of the container routes already.
	Routes []*types.Route
}

// Expected is the state CHECK verifies.
type Expected struct {
	NetnsPath  string
	IfName     string
	HostIfName string
	Bridge     string
	MAC        string
	IPs        []*current.IPConfig
	Routes     []*types.Route
}

// FakeHost is an in-memory Host: the bridge and the interfaces of each namespace.
type FakeHost struct {
	mu sync.Mutex
	// BridgeName, BridgeMTU and BridgeAddrs describe the router's bridge.
	BridgeName  string
	BridgeMTU   int
	BridgeAddrs []netip.Prefix
	// Netns are the namespaces that exist; Own is the plugin's.
	Netns map[string]bool
	Own   string
	// Links are the interfaces in the namespaces, keyed by netns path + "/" + ifname: the
	// plugin's (HostIfName set) and foreign ones (AddForeignLink, no host end).
	Links map[string]AttachSpec
	// FailAttach makes Attach fail.
	FailAttach error
	lock       sync.Mutex
}

// NewFakeHost returns a fake with a bridge and no namespaces.
func NewFakeHost(bridge string, mtu int) *FakeHost {
	return &FakeHost{BridgeName: bridge, BridgeMTU: mtu, Netns: map[string]bool{}, Links: map[string]AttachSpec{}, Own: "/proc/self/ns/net"}
}

// AddBridgeAddr gives the fake bridge an address (as the router's expose does).
func (f *FakeHost) AddBridgeAddr(p netip.Prefix) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.BridgeAddrs = append(f.BridgeAddrs, p)
}

// AddForeignLink puts an interface the plugin did not make (a runtime's, another
// plugin's) into a namespace.
func (f *FakeHost) AddForeignLink(netns, ifName string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Links[netns+"/"+ifName] = AttachSpec{NetnsPath: netns, IfName: ifName}
}

// Link returns the spec of an attached interface.
func (f *FakeHost) Link(netns, ifName string) (AttachSpec, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.Links[netns+"/"+ifName]
	return s, ok
}

func (f *FakeHost) Bridge(name string) (BridgeInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if name != f.BridgeName {
		return BridgeInfo{}, fmt.Errorf("link %s not found", name)
	}
	return BridgeInfo{MTU: f.BridgeMTU, Addrs: slices.Clone(f.BridgeAddrs)}, nil
}

func (f *FakeHost) IsOwnNetns(p string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if p == f.Own {
		return true, nil
	}
	if !f.Netns[p] {
		return false, fmt.Errorf("%s: no such namespace", p)
	}
	return false, nil
}

func fakeMAC(s string) net.HardwareAddr {
	m := net.HardwareAddr{0x02, 0, 0, 0, 0, 0}
	for i, c := range []byte(s) {
		m[1+i%5] ^= c
	}
	return m
}

func (f *FakeHost) Attach(spec AttachSpec) (Attached, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.FailAttach != nil {
		return Attached{}, f.FailAttach
	}
	if !f.Netns[spec.NetnsPath] {
		return Attached{}, fmt.Errorf("open namespace %s: no such file", spec.NetnsPath)
	}
	if prev, ok := f.Links[spec.NetnsPath+"/"+spec.IfName]; ok && prev.HostIfName != spec.HostIfName {
		return Attached{}, fmt.Errorf("%w: %s in %s is not the peer of %s", ErrIfaceExists, spec.IfName, spec.NetnsPath, spec.HostIfName)
	}
	f.Links[spec.NetnsPath+"/"+spec.IfName] = spec
	return Attached{MAC: fakeMAC(spec.NetnsPath + spec.IfName), HostMAC: fakeMAC(spec.HostIfName), Routes: spec.Routes}, nil
}

// Detach deletes the pair whose host end is hostIfName, as the kernel does when the real
// one deletes the host end: a foreign interface of the same name stays.
func (f *FakeHost) Detach(_, _, hostIfName string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for k, l := range f.Links {
		if l.HostIfName != "" && l.HostIfName == hostIfName {
			delete(f.Links, k)
		}
	}
	return nil
}

func (f *FakeHost) Check(want Expected) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.Links[want.NetnsPath+"/"+want.IfName]
	if !ok {
		return errors.New("interface not found")
	}
	if mac := fakeMAC(want.NetnsPath + want.IfName).String(); want.MAC != "" && want.MAC != mac {
		return fmt.Errorf("mac %s, want %s", mac, want.MAC)
	}
	for _, ip := range want.IPs {
		if ip.Address.String() != s.CIDR.String() {
			return fmt.Errorf("address %s missing", ip.Address.String())
		}
	}
	if len(want.Routes) != len(s.Routes) {
		return fmt.Errorf("%d routes, want %d", len(s.Routes), len(want.Routes))
	}
	return nil
}

func (f *FakeHost) Lock(string) (func(), error) {
	f.lock.Lock()
	return f.lock.Unlock, nil
}
