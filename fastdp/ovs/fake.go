package ovs

import (
	"errors"
	"slices"
	"sync"
)

// FakeLinks is an in-memory Links for tests without root: it records the devices that
// Uplink creates and DeleteLink removes.
type FakeLinks struct {
	mu sync.Mutex
	// Bridges are the Linux bridges that exist; Uplink into another one fails.
	Bridges []string
	devs    map[string]int // name -> mtu
	deleted []string
}

// Uplink records both ends of the pair.
func (f *FakeLinks) Uplink(bridge, ovsEnd, bridgeEnd string, mtu int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !slices.Contains(f.Bridges, bridge) {
		return errors.New("fake: no bridge " + bridge)
	}
	if f.devs == nil {
		f.devs = map[string]int{}
	}
	f.devs[ovsEnd], f.devs[bridgeEnd] = mtu, mtu
	return nil
}

// DeleteLink removes name and, for a pair made by Uplink, its peer.
func (f *FakeLinks) DeleteLink(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deleted = append(f.deleted, name)
	delete(f.devs, name)
	if name == UplinkOVS {
		delete(f.devs, UplinkBridge)
	}
	return nil
}

// Devices returns the devices that exist, sorted.
func (f *FakeLinks) Devices() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for d := range f.devs {
		out = append(out, d)
	}
	slices.Sort(out)
	return out
}

// Deleted returns the names given to DeleteLink, in order.
func (f *FakeLinks) Deleted() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.deleted)
}
