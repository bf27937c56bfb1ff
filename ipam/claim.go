package ipam

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/weavemesh/weave/internal/logx"
	"github.com/weavemesh/weave/ipam/addr"
	"github.com/weavemesh/weave/mesh"
)

type wantedClaim struct {
	key    Key
	prefix netip.Prefix
}

func (a *Allocator) countOrphans() uint64 {
	var n uint64
	for _, r := range a.space.Orphans() {
		n += uint64(r.Size())
	}
	return n
}

// checkOrphans asks the owners of addresses we use but no longer own to give them back.
func (a *Allocator) checkOrphans() {
	if a.gossip == nil || a.ring.Empty() {
		return
	}
	now := a.cfg.Now()
	for _, r := range a.space.Orphans() {
		for ad := r.Start; ad < r.End; ad++ {
			if _, bad := a.conflicts[ad]; bad {
				continue
			}
			if at, ok := a.claimReqs[ad]; ok && now.Sub(at) < 2*a.cfg.tick {
				continue
			}
			owner := a.ring.Owner(ad)
			if owner == mesh.UnknownPeerName || owner == a.cfg.Name || !a.reachable(owner) {
				continue
			}
			a.claimReqs[ad] = now
			a.unicast(owner, encodeClaim(ad))
		}
	}
}

func (a *Allocator) handleClaim(src mesh.PeerName, ad addr.Addr) {
	switch {
	case a.ring.Empty() || a.ring.Owner(ad) != a.cfg.Name:
		a.unicast(src, encodeClaimDenied(ad, claimNotOwner, a.ring))
	case !a.space.IsFree(ad) || !a.space.Give(addr.Range{Start: ad, End: ad + 1}):
		a.unicast(src, encodeClaimDenied(ad, claimInUse, a.ring))
	default:
		if err := a.grant(addr.Range{Start: ad, End: ad + 1}, src); err != nil {
			a.log.Error("claim grant failed", logx.KeyIP, ad, logx.KeyPeer, src, logx.KeyErr, err)
			a.unicast(src, encodeClaimDenied(ad, claimNotOwner, a.ring))
			return
		}
		a.log.Info("gave an address back to the peer using it", logx.KeyIP, ad, logx.KeyPeer, src)
	}
}

func (a *Allocator) handleClaimDenied(src mesh.PeerName, ad addr.Addr, reason byte) {
	delete(a.claimReqs, ad)
	if reason != claimInUse {
		a.notify() // the ring that came with it names the new owner; ask again
		return
	}
	if w, ok := a.wanted[ad]; ok {
		delete(a.wanted, ad)
		a.claimDenied[ad] = src
		a.log.Info("claim refused: address in use elsewhere", logx.KeyIP, ad, logx.KeyPeer, src, logx.KeyContainer, w.key)
	}
	if k, ok := a.byAddr[ad.Netip()]; ok && !a.space.Owns(ad) {
		if _, seen := a.conflicts[ad]; !seen {
			a.stats.conflicts.Add(1)
			msg := fmt.Sprintf("%s of %s is used here but owned and in use by %s: release it on one side", ad, k, src)
			a.conflicts[ad] = msg
			a.log.Error("address conflict", logx.KeyIP, ad, logx.KeyContainer, k, logx.KeyPeer, src)
		}
	}
	a.notify()
}

// Claim records that (id, iface) uses addr, e.g. a restarted container keeping its address.
// Inside the range the address must be free: ours, or given to us by its owner (we ask);
// outside it is only recorded. It waits until the ring is ready or ctx ends.
func (a *Allocator) Claim(ctx context.Context, id, iface string, p netip.Prefix) error {
	k := Key{id, iface}
	if err := k.valid(); err != nil {
		return err
	}
	ad, ok := addr.FromNetip(p.Addr())
	if !ok || !p.IsValid() {
		return fmt.Errorf("%w: %s is not an IPv4 address", ErrBadArgument, p)
	}
	p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits())
	for {
		ch, done, err := a.tryClaim(k, p, ad)
		if done {
			return err
		}
		if err := a.wait(ctx, ch); err != nil {
			a.mu.Lock()
			if w, ok := a.wanted[ad]; ok && w.key == k {
				delete(a.wanted, ad)
			}
			a.mu.Unlock()
			return err
		}
	}
}

func (a *Allocator) tryClaim(k Key, p netip.Prefix, ad addr.Addr) (chan struct{}, bool, error) {
	a.mu.Lock()
	defer a.unlock()
	done, err := a.claimLocked(k, p, ad)
	return a.changed, done, err
}

func (a *Allocator) claimLocked(k Key, p netip.Prefix, ad addr.Addr) (bool, error) {
	if a.closed {
		return true, ErrClosed
	}
	if other, ok := a.byAddr[p.Addr()]; ok {
		if other == k {
			// Possibly granted by its owner just now: saved before we say yes.
			if err := a.commit(); err != nil {
				return true, fmt.Errorf("ipam: claim %s for %s: %w", p, k, err)
			}
			return true, nil
		}
		return true, fmt.Errorf("%w: %s is used by %s", ErrAddressInUse, p.Addr(), other)
	}
	if !a.cfg.rng.Contains(ad) {
		a.record(k, p)
		return true, a.commitOrUndo(k, p, false)
	}
	if a.cfg.mode == initObserver {
		return true, ErrObserver
	}
	a.startConsensus()
	if a.ring.Empty() {
		return false, nil
	}
	if a.awaitRings != nil && a.mustWaitForRings() {
		return false, nil
	}
	if a.space.IsFree(ad) {
		a.space.Take(ad)
		a.record(k, p)
		a.reportFreeAt(ad)
		return true, a.commitOrUndo(k, p, true)
	}
	owner := a.ring.Owner(ad)
	if owner == a.cfg.Name {
		return true, fmt.Errorf("%w: %s is ours but not free", ErrAddressInUse, p.Addr())
	}
	if by, ok := a.claimDenied[ad]; ok {
		delete(a.claimDenied, ad)
		return true, fmt.Errorf("%w: %s is owned and in use by peer %s", ErrAddressInUse, p.Addr(), by)
	}
	a.wanted[ad] = wantedClaim{k, p}
	if at, ok := a.claimReqs[ad]; (!ok || a.cfg.Now().Sub(at) >= 2*a.cfg.tick) && a.reachable(owner) {
		a.claimReqs[ad] = a.cfg.Now()
		a.unicast(owner, encodeClaim(ad))
	}
	return false, nil
}

func (a *Allocator) commitOrUndo(k Key, p netip.Prefix, inRange bool) error {
	if err := a.commit(); err != nil {
		if inRange {
			ad, _ := addr.FromNetip(p.Addr())
			a.space.Release(ad)
		}
		a.unrecord(k, p.Addr())
		return fmt.Errorf("ipam: claim %s for %s: %w", p, k, err)
	}
	return nil
}
