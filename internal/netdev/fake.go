package netdev

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
)

// Fake is an in-memory Links for tests without root.
type Fake struct {
	mu       sync.Mutex
	links    map[string]FakeLink
	attached map[string]*FakeAttachment
	// MTU is what UnderlayMTU returns.
	MTU int
	// AttachErr, when set, is called by Attach after it made the devices; an error leaves
	// them half-made (as a failure after the veth exists does on Linux) and is returned.
	AttachErr func(AttachSpec) error
	// StaleRemoved counts half-made host ends Attach replaced.
	StaleRemoved int
}

// FakeLink is what Fake records of a link.
type FakeLink struct {
	Kind   string // "bridge" or "tap"
	Master string
	MTU    int
	MAC    string
	Addrs  []netip.Prefix
}

var _ Links = (*Fake)(nil)

// NewFake returns an empty Fake with a 1500-byte underlay.
func NewFake() *Fake { return &Fake{links: make(map[string]FakeLink), MTU: 1500} }

func (f *Fake) EnsureBridge(name string, mac net.HardwareAddr, mtu int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if l, ok := f.links[name]; ok && l.Kind != "bridge" {
		return fmt.Errorf("%s exists but is a %s, not a bridge", name, l.Kind)
	}
	f.links[name] = FakeLink{Kind: "bridge", MTU: mtu, MAC: mac.String()}
	return nil
}

func (f *Fake) EnsureTAP(name, bridge string, mtu int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.links[bridge]; !ok {
		return fmt.Errorf("look up bridge %s: %w", bridge, ErrNotFound)
	}
	f.links[name] = FakeLink{Kind: "tap", Master: bridge, MTU: mtu}
	return nil
}

func (f *Fake) DeleteBridge(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for n, l := range f.links {
		if l.Master == name {
			delete(f.links, n)
		}
	}
	delete(f.links, name)
	clear(f.attached)
	return nil
}

func (f *Fake) Delete(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.links, name)
	// A veth's container end goes with its host end.
	for k, a := range f.attached {
		if a.Spec.HostIfName == name {
			delete(f.attached, k)
		}
	}
	return nil
}

func (f *Fake) Exists(name string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.links[name]
	return ok, nil
}

func (f *Fake) UnderlayMTU() (int, error) { return f.MTU, nil }

// Link returns the recorded link.
func (f *Fake) Link(name string) (FakeLink, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, ok := f.links[name]
	return l, ok
}

// FakeAttachment is what Fake records of an attached namespace.
type FakeAttachment struct {
	Spec  AttachSpec
	CIDRs []netip.Prefix
}

var _ Attacher = (*Fake)(nil)

func (f *Fake) Attach(spec AttachSpec) (Attached, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.links[spec.Bridge]; !ok {
		return Attached{}, fmt.Errorf("look up bridge %s: %w", spec.Bridge, ErrNotFound)
	}
	if f.attached == nil {
		f.attached = make(map[string]*FakeAttachment)
	}
	key := spec.NetnsPath + "/" + spec.IfName
	a := f.attached[key]
	if a == nil {
		// As on Linux: a host end without its container end is half-made, replace it.
		if _, ok := f.links[spec.HostIfName]; ok {
			f.StaleRemoved++
			delete(f.links, spec.HostIfName)
		}
		a = &FakeAttachment{Spec: spec}
		f.attached[key] = a
		f.links[spec.HostIfName] = FakeLink{Kind: "veth", Master: spec.Bridge, MTU: spec.MTU}
	}
	for _, c := range spec.CIDRs {
		if !slices.Contains(a.CIDRs, c) {
			a.CIDRs = append(a.CIDRs, c)
		}
	}
	if f.AttachErr != nil {
		if err := f.AttachErr(spec); err != nil {
			return Attached{}, err
		}
	}
	return Attached{MAC: net.HardwareAddr{0x02, 0, 0, 0, 0, byte(len(f.attached))}, CIDRs: slices.Clone(a.CIDRs)}, nil
}

func (f *Fake) Detach(netnsPath, ifName string, cidrs []netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := netnsPath + "/" + ifName
	a := f.attached[key]
	if a == nil {
		return nil
	}
	if len(cidrs) == 0 {
		delete(f.attached, key)
		delete(f.links, a.Spec.HostIfName)
		return nil
	}
	a.CIDRs = slices.DeleteFunc(a.CIDRs, func(c netip.Prefix) bool { return slices.Contains(cidrs, c) })
	return nil
}

func (f *Fake) Expose(bridge string, cidr netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, ok := f.links[bridge]
	if !ok {
		return fmt.Errorf("look up bridge %s: %w", bridge, ErrNotFound)
	}
	if !slices.Contains(l.Addrs, cidr) {
		l.Addrs = append(l.Addrs, cidr)
	}
	f.links[bridge] = l
	return nil
}

func (f *Fake) Hide(bridge string, cidr netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, ok := f.links[bridge]
	if !ok {
		return nil
	}
	l.Addrs = slices.DeleteFunc(l.Addrs, func(c netip.Prefix) bool { return c == cidr })
	f.links[bridge] = l
	return nil
}

// Attachment returns what is attached at netnsPath/ifName.
func (f *Fake) Attachment(netnsPath, ifName string) (FakeAttachment, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, ok := f.attached[netnsPath+"/"+ifName]
	if !ok {
		return FakeAttachment{}, false
	}
	return *a, true
}

func (f *Fake) Inspect(netnsPath, ifName string) (Attached, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a := f.attached[netnsPath+"/"+ifName]
	if a == nil {
		return Attached{}, false, nil
	}
	return Attached{MAC: net.HardwareAddr{0x02, 0, 0, 0, 0, 1}, CIDRs: slices.Clone(a.CIDRs)}, true, nil
}

// AddLink records a link as if something else had made it (a half-made veth, a device of
// another program), for tests of what the code under test does with it.
func (f *Fake) AddLink(name string, l FakeLink) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.links[name] = l
}
