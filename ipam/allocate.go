package ipam

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/weavemesh/weave/internal/logx"
	"github.com/weavemesh/weave/ipam/addr"
	"github.com/weavemesh/weave/mesh"
)

type request struct {
	peer mesh.PeerName
	at   time.Time
}

func (a *Allocator) subnetRange(subnet netip.Prefix) (netip.Prefix, addr.Range, error) {
	if !subnet.IsValid() {
		return a.cfg.DefaultSubnet, a.cfg.subnet, nil
	}
	subnet = subnet.Masked()
	r, err := addr.FromPrefix(subnet)
	if err != nil || !a.cfg.rng.ContainsRange(r) {
		return subnet, r, fmt.Errorf("%w: subnet %s not inside %s", ErrOutOfRange, subnet, a.cfg.Range)
	}
	return subnet, r, nil
}

// Allocate returns the address of (id, iface) in subnet (the default subnet if subnet is the
// zero Prefix), allocating the lowest free one of our space, or asking the peer with the most
// free space for some when we have none. It waits until the ring is ready or ctx ends; the
// same (id, iface, subnet) always gets the same address.
func (a *Allocator) Allocate(ctx context.Context, id, iface string, subnet netip.Prefix) (netip.Prefix, error) {
	k := Key{id, iface}
	if err := k.valid(); err != nil {
		return netip.Prefix{}, err
	}
	subnet, sr, err := a.subnetRange(subnet)
	if err != nil {
		return netip.Prefix{}, err
	}
	for {
		p, ch, done, err := a.tryAllocate(k, subnet, sr)
		if done {
			return p, err
		}
		if err := a.wait(ctx, ch); err != nil {
			return netip.Prefix{}, err
		}
	}
}

// tryAllocate is one attempt; done is false when the caller has to wait on ch, the change
// channel as it was when the attempt ended, so a change after the attempt is never missed.
func (a *Allocator) tryAllocate(k Key, subnet netip.Prefix, sr addr.Range) (p netip.Prefix, ch chan struct{}, done bool, err error) {
	a.mu.Lock()
	defer a.unlock()
	p, done, err = a.allocateLocked(k, subnet, sr)
	return p, a.changed, done, err
}

func (a *Allocator) allocateLocked(k Key, subnet netip.Prefix, sr addr.Range) (netip.Prefix, bool, error) {
	switch {
	case a.closed:
		return netip.Prefix{}, true, ErrClosed
	case a.cfg.mode == initObserver:
		return netip.Prefix{}, true, ErrObserver
	}
	for _, p := range a.allocs[k] {
		if p.Bits() == subnet.Bits() && subnet.Contains(p.Addr()) {
			// Made by an earlier call or a re-claim: make sure it is saved before use.
			if err := a.commit(); err != nil {
				return netip.Prefix{}, true, fmt.Errorf("ipam: allocate %s: %w", k, err)
			}
			return p, true, nil
		}
	}
	a.startConsensus() // no-op unless the ring is empty; may seed it at once (quorum 1)
	if a.ring.Empty() {
		return netip.Prefix{}, false, nil
	}
	if a.mustWaitForRings() {
		return netip.Prefix{}, false, nil
	}
	ad, ok := a.space.Allocate(addr.Usable(sr))
	if !ok {
		a.requestSpace(sr)
		return netip.Prefix{}, false, nil
	}
	p := netip.PrefixFrom(ad.Netip(), subnet.Bits())
	a.record(k, p)
	a.reportFreeAt(ad)
	if err := a.commit(); err != nil {
		a.space.Release(ad)
		a.unrecord(k, p.Addr())
		return netip.Prefix{}, true, fmt.Errorf("ipam: allocate %s: %w", k, err)
	}
	a.waitReason = ""
	return p, true, nil
}

// requestSpace asks the reachable peer with the most free space in sr for some.
func (a *Allocator) requestSpace(sr addr.Range) {
	now := a.cfg.Now()
	if req, ok := a.spaceReqs[sr]; ok && now.Sub(req.at) < 2*a.cfg.tick {
		return
	}
	delete(a.spaceReqs, sr)
	var unreachable int
	for _, d := range a.ring.Donors(sr, a.cfg.Name) {
		if a.denied[sr][d.Peer] {
			continue
		}
		if !a.reachable(d.Peer) {
			unreachable++
			continue
		}
		a.spaceReqs[sr] = request{d.Peer, now}
		a.log.Debug("asking for space", logx.KeyCIDR, sr, logx.KeyPeer, d.Peer, logx.KeyCount, d.Free)
		a.unicast(d.Peer, encodeSpace(msgSpaceRequest, sr, nil))
		a.waitReason = "waiting for IP(s) to become available"
		return
	}
	a.log.Debug("no peer to ask for space", logx.KeyCIDR, sr, logx.KeyCount, unreachable)
	if unreachable > 0 {
		a.waitReason = "all IP ranges owned by unreachable peers - use 'weavectl rmpeer' if they are dead"
	} else {
		a.waitReason = "waiting for IP(s) to become available (no peer has free space)"
	}
}

func (a *Allocator) handleSpaceRequest(src mesh.PeerName, sr addr.Range) {
	if a.ring.Empty() || src == a.cfg.Name || !a.cfg.rng.ContainsRange(sr) {
		a.unicast(src, encodeSpace(msgSpaceDenied, sr, a.ring))
		return
	}
	block, ok := a.space.Donate(sr)
	if !ok {
		a.log.Debug("no space to give", logx.KeyCIDR, sr, logx.KeyPeer, src)
		a.unicast(src, encodeSpace(msgSpaceDenied, sr, a.ring))
		return
	}
	if err := a.grant(block, src); err != nil {
		a.log.Error("donation failed", logx.KeyCIDR, block, logx.KeyPeer, src, logx.KeyErr, err)
		a.unicast(src, encodeSpace(msgSpaceDenied, sr, a.ring))
		return
	}
	a.log.Debug("donated space", logx.KeyCIDR, block, logx.KeyPeer, src)
}

// Lookup returns the addresses of (id, iface).
func (a *Allocator) Lookup(id, iface string) []netip.Prefix {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.allocs[Key{id, iface}])
}

// Owned returns every allocation of this peer.
func (a *Allocator) Owned() map[Key][]netip.Prefix {
	a.mu.Lock()
	defer a.mu.Unlock()
	return cloneAllocs(a.allocs)
}
