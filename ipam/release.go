package ipam

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/weavemesh/weave/ipam/addr"
)

func (a *Allocator) releaseLocked(k Key, only netip.Addr) int {
	n := 0
	for _, p := range slices.Clone(a.allocs[k]) {
		if only.IsValid() && p.Addr() != only {
			continue
		}
		a.unrecord(k, p.Addr())
		if ad, ok := addr.FromNetip(p.Addr()); ok && a.cfg.rng.Contains(ad) {
			a.space.Release(ad)
			a.reportFreeAt(ad)
			delete(a.conflicts, ad)
			delete(a.claimReqs, ad)
		}
		n++
	}
	return n
}

// Release frees every address of (id, iface); it returns how many there were.
func (a *Allocator) Release(id, iface string) (int, error) {
	k := Key{id, iface}
	return a.release(func(yield func(Key) bool) { yield(k) }, netip.Addr{})
}

// ReleaseAddr frees one address of (id, iface).
func (a *Allocator) ReleaseAddr(id, iface string, ip netip.Addr) (int, error) {
	k := Key{id, iface}
	return a.release(func(yield func(Key) bool) { yield(k) }, ip.Unmap())
}

// ReleaseAll frees every address of container id, whatever the interface.
func (a *Allocator) ReleaseAll(id string) (int, error) {
	return a.release(func(yield func(Key) bool) {
		for k := range a.allocs {
			if k.ID == id && !yield(k) {
				return
			}
		}
	}, netip.Addr{})
}

// release frees the allocations of the keys keys yields (called with the lock held).
func (a *Allocator) release(keys func(yield func(Key) bool), only netip.Addr) (int, error) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return 0, ErrClosed
	}
	n := 0
	for _, k := range slices.Collect(keys) { // collected first: releasing changes a.allocs
		n += a.releaseLocked(k, only)
	}
	if n > 0 {
		a.notify()
	}
	err := a.commit()
	a.unlock()
	if err != nil {
		return n, fmt.Errorf("ipam: release: %w", err)
	}
	return n, nil
}
