package ipam

import (
	"errors"
	"maps"

	"github.com/weavemesh/weave/internal/logx"
	"github.com/weavemesh/weave/ipam/addr"
	"github.com/weavemesh/weave/ipam/ring"
	"github.com/weavemesh/weave/mesh"
)

// mergeRing folds in a ring from src ("" when it came by periodic gossip). A ring that
// cannot be merged is refused and reported; it never breaks the connection.
func (a *Allocator) mergeRing(r *ring.Ring, src string) bool {
	wasEmpty := a.ring.Empty()
	res, err := a.ring.Merge(r)
	if err == nil && src != "" && !r.Empty() && !a.synced {
		if a.awaitRings == nil {
			a.synced = true
		} else if p, perr := mesh.ParsePeerName(src); perr == nil {
			delete(a.awaitRings, p)
		}
		a.notify()
	}
	if err != nil {
		a.stats.rejected.Add(1)
		msg := err.Error()
		if errors.Is(err, ring.ErrSeedMismatch) || errors.Is(err, ring.ErrRangeMismatch) {
			msg += "; the peers on one side must give up their ring: on each of them stop the router, remove ipam.db" +
				" from its state dir and launch it again; it re-learns the ring from its peers, re-claims the addresses" +
				" its containers use and reports any clash"
		}
		if msg != a.ringErr {
			a.log.Error("refused ring update", logx.KeyPeer, src, logx.KeyErr, err)
		}
		a.ringErr, a.ringErrAt = msg, a.cfg.Now()
		return false
	}
	for _, c := range res.Conflicts {
		a.stats.conflicts.Add(1)
		a.log.Warn("conflicting ring entries (space taken over twice)", logx.KeyReason, c.String())
	}
	if !res.Changed {
		return false
	}
	if wasEmpty {
		a.log.Info("ring received", logx.KeyFrom, src, logx.KeyPeer, a.ring.Seeds)
		a.proposing = false
		a.adopting = false
		if a.rejoining {
			a.awaitRingsFromOwners(src)
		}
		a.rejoining = false
	}
	a.ringChanged()
	return true
}

// ringChanged brings everything that depends on the ring up to date.
func (a *Allocator) ringChanged() {
	a.dirtyRing = true
	a.saveMembership()
	orphansBefore := a.countOrphans()
	a.space.SetOwned(a.ring.OwnedBy(a.cfg.Name))
	for ad, w := range a.wanted {
		if a.space.IsFree(ad) {
			a.space.Take(ad)
			a.record(w.key, w.prefix)
			delete(a.wanted, ad)
		}
	}
	if n := a.countOrphans(); n > orphansBefore {
		a.log.Warn("space we use was taken over by another peer; re-claiming the addresses in use", logx.KeyCount, n-orphansBefore)
	}
	a.reportFree()
	clear(a.denied)
	a.checkOrphans()
	a.notify()
}

// reportFree writes our free counts into our pieces (for donors' selection elsewhere).
func (a *Allocator) reportFree() {
	for _, pc := range a.ring.Pieces() {
		if pc.Peer == a.cfg.Name {
			if a.ring.SetFree(a.cfg.Name, pc.Token, a.space.FreeIn(pc.Range)) {
				a.dirtyRing = true
			}
		}
	}
}

func (a *Allocator) reportFreeAt(ad addr.Addr) {
	if pc, ok := a.ring.PieceAt(ad); ok && pc.Peer == a.cfg.Name {
		if a.ring.SetFree(a.cfg.Name, pc.Token, a.space.FreeIn(pc.Range)) {
			a.dirtyRing = true
		}
	}
}

func (a *Allocator) broadcastRing() {
	a.lastRingTx = a.cfg.Now()
	a.outbox = append(a.outbox, outMsg{broadcast: true, data: &gossipData{ring: a.ring.Clone()}})
}

// helloIfUnsynced asks every peer for its ring while we wait to learn whether our saved
// space is still ours, or while we wait to adopt one (our hello then carries an empty ring).
func (a *Allocator) helloIfUnsynced() {
	if (!a.synced && !a.ring.Empty()) || (a.adopting && a.ring.Empty()) {
		a.outbox = append(a.outbox, outMsg{broadcast: true, data: &gossipData{ring: a.ring.Clone(), hello: true}})
	}
}

// awaitRingsFromOwners starts waiting, after a rejoin, for the ring of every other owner
// (src, the one we adopted, excepted) and asks them for it at once.
func (a *Allocator) awaitRingsFromOwners(src string) {
	a.awaitRings = map[mesh.PeerName]bool{}
	for _, p := range a.ring.Owners() {
		if p != a.cfg.Name {
			a.awaitRings[p] = true
		}
	}
	if p, err := mesh.ParsePeerName(src); err == nil {
		delete(a.awaitRings, p)
	}
	a.synced = false
	a.startedAt = a.cfg.Now()
	a.helloIfUnsynced()
}

// mustWaitForRings reports whether allocation has to wait to hear peers' rings first: after
// a restart with a saved ring that names other owners (our space may have been reclaimed
// while we were away), or after rejoining with a lost database (awaitRings). It waits at
// most two ticks: nobody answering means we are alone, and our ring is the best there is.
func (a *Allocator) mustWaitForRings() bool {
	if a.synced {
		return false
	}
	if a.awaitRings != nil {
		maps.DeleteFunc(a.awaitRings, func(p mesh.PeerName, _ bool) bool { return !a.reachable(p) })
		if len(a.awaitRings) == 0 {
			a.synced, a.awaitRings = true, nil
			return false
		}
	}
	if a.cfg.Now().Sub(a.startedAt) < 2*a.cfg.tick {
		a.waitReason = "waiting to hear the ring from peers (our space may have changed while we were away)"
		return true
	}
	a.synced, a.awaitRings = true, nil
	return false
}

// grant gives r, already taken out of our space, to dst in the ring; the changed ring goes
// to everyone and to dst at once (its answer). An error means space and ring disagree (a
// bug): the space is resynchronised from the ring and the caller sends its refusal.
func (a *Allocator) grant(r addr.Range, dst mesh.PeerName) error {
	if err := a.ring.Grant(a.cfg.Name, r, dst); err != nil {
		a.ringChanged()
		return err
	}
	a.ringChanged()
	a.broadcastRing()
	a.unicast(dst, encodeRing(a.ring))
	return nil
}
