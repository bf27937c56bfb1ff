package netdev

import (
	"fmt"
	"net"
	"sync"
)

// Fake is an in-memory Links for tests without root.
type Fake struct {
	mu    sync.Mutex
	links map[string]FakeLink
	// MTU is what UnderlayMTU returns.
	MTU int
}

// FakeLink is what Fake records of a link.
type FakeLink struct {
	Kind   string // "bridge" or "tap"
	Master string
	MTU    int
	MAC    string
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

func (f *Fake) Delete(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.links, name)
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
