package ipam

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/weavemesh/weave/internal/logx"
	"github.com/weavemesh/weave/ipam/paxos"
	"github.com/weavemesh/weave/ipam/ring"
	"github.com/weavemesh/weave/mesh"
)

// ResolvePeer maps a peer name or a nickname of a ring owner to a peer name.
func (a *Allocator) ResolvePeer(s string) (mesh.PeerName, error) {
	if p, err := mesh.ParsePeerName(s); err == nil {
		return p, nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	var found []mesh.PeerName
	for _, p := range a.ring.Owners() {
		if a.cfg.Peers.NickName(p) == s {
			found = append(found, p)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return 0, fmt.Errorf("%w: %q", ErrUnknownPeer, s)
	}
	return 0, fmt.Errorf("%w: nickname %q names %d peers; use the peer name", ErrBadArgument, s, len(found))
}

// reclaimBump is added to the versions of entries taken from a dead peer, so the takeover
// wins over edits the dead peer may have made that we never saw. Every peer uses the same
// bump, so two takeovers of the same space tie, and the tie is settled (and reported)
// identically everywhere.
const reclaimBump = 100

// RemovePeer takes over the space of a dead peer (weavectl rmpeer) and returns the number
// of addresses taken. Run it on one peer only: two peers doing it at once is a conflict
// (detected and reported, but containers may then share an address until one releases).
func (a *Allocator) RemovePeer(p mesh.PeerName) (uint32, error) {
	a.mu.Lock()
	defer a.unlock()
	switch {
	case a.closed:
		return 0, ErrClosed
	case a.cfg.mode == initObserver:
		return 0, ErrObserver
	case p == a.cfg.Name:
		return 0, fmt.Errorf("%w: cannot remove ourselves", ErrBadArgument)
	case a.ring.Empty():
		return 0, ErrNotInitialised
	case !slices.Contains(a.ring.Owners(), p):
		return 0, nil // nothing to take; rmpeer of a peer without space is fine
	case a.cfg.Peers.IsReachable(p):
		return 0, fmt.Errorf("%w: %s", ErrPeerReachable, p)
	}
	n := a.takeOver(p)
	a.log.Info("took over the space of a removed peer", logx.KeyPeer, p, logx.KeyCount, n)
	a.ringChanged()
	a.broadcastRing()
	return n, nil
}

// Handover gives all our space to a reachable peer and forgets our allocations (weavectl
// reset). It returns the heir (UnknownPeerName if we owned nothing).
func (a *Allocator) Handover() (mesh.PeerName, error) {
	a.mu.Lock()
	defer a.unlock()
	if a.closed {
		return 0, ErrClosed
	}
	if len(a.ring.OwnedBy(a.cfg.Name)) == 0 {
		return 0, nil
	}
	var heir mesh.PeerName
	for _, p := range a.ring.Owners() {
		if p != a.cfg.Name && a.cfg.Peers.IsReachable(p) {
			heir = p
			break
		}
	}
	if heir == mesh.UnknownPeerName {
		return 0, ErrNoHeir
	}
	for k := range a.allocs {
		a.releaseLocked(k, netip.Addr{})
	}
	n := a.ring.Transfer(a.cfg.Name, heir, 1)
	a.log.Info("handed our space over", logx.KeyPeer, heir, logx.KeyCount, n)
	a.ringChanged()
	a.broadcastRing()
	return heir, nil
}

// ForgetRing is the repair for "seeded by different peers" on the side that gives up:
// it drops our ring but keeps our allocations, so the next ring heard from a peer is
// adopted and the addresses our containers use are re-claimed from their new owners (a
// refused one is reported as a conflict). Run it on every peer of that side.
func (a *Allocator) ForgetRing() error {
	a.mu.Lock()
	defer a.unlock()
	if a.closed {
		return ErrClosed
	}
	a.log.Warn("forgetting our ring: adopting the next one a peer sends", logx.KeyCount, len(a.allocs))
	a.ring = ring.New(a.cfg.rng)
	a.space.SetOwned(nil)
	a.ringErr = ""
	a.adopting = true
	a.proposing = false
	if a.node != nil {
		a.node = paxos.NewNode(paxos.NodeID{Name: a.cfg.Name, UID: a.cfg.UID}, a.node.Quorum())
		a.dirtyPaxos = true
	}
	a.dirtyRing = true
	a.notify()
	return nil
}

// reclaim takes over the space of peers the cluster agreed are dead for ReclaimAfter. Only
// the reachable space owner with the lowest name does it, to keep two peers from doing it at
// once; after a partition both sides may have, and the merge reports it.
func (a *Allocator) reclaim(now time.Time) {
	if a.cfg.ReclaimAfter <= 0 || a.ring.Empty() || a.cfg.mode == initObserver {
		return
	}
	owners := a.ring.Owners()
	leader := a.cfg.Name
	for _, p := range owners {
		if p < leader && a.cfg.Peers.IsReachable(p) {
			leader = p
		}
	}
	if leader != a.cfg.Name {
		return
	}
	changed := false
	for _, p := range owners {
		if p == a.cfg.Name || a.cfg.Peers.IsReachable(p) {
			continue
		}
		since, dead := a.cfg.Peers.DeadSince(p)
		if !dead || now.Sub(since) < a.cfg.ReclaimAfter {
			continue
		}
		n := a.takeOver(p)
		a.log.Warn("reclaimed the space of a dead peer", logx.KeyPeer, p, logx.KeyDuration, now.Sub(since), logx.KeyCount, n)
		changed = true
	}
	if changed {
		a.ringChanged()
		a.broadcastRing()
	}
}

// takeOver moves p's space to us and quarantines it (see space.Quarantine). The caller
// runs ringChanged.
func (a *Allocator) takeOver(p mesh.PeerName) uint32 {
	theirs := a.ring.OwnedBy(p)
	n := a.ring.Transfer(p, a.cfg.Name, reclaimBump)
	a.space.SetOwned(a.ring.OwnedBy(a.cfg.Name))
	for _, r := range theirs {
		a.space.Quarantine(r)
	}
	a.stats.reclaimed.Add(uint64(n))
	return n
}
