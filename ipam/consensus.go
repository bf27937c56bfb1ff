package ipam

import (
	"github.com/weavemesh/weave/internal/logx"
	"github.com/weavemesh/weave/ipam/paxos"
)

// startConsensus begins (once) the election of the first split.
func (a *Allocator) startConsensus() {
	if a.node == nil || a.proposing || !a.ring.Empty() || a.adopting {
		return
	}
	a.proposing = true
	a.log.Info("starting consensus on the initial split", logx.KeyCount, a.node.Quorum())
	a.propose()
}

func (a *Allocator) propose() {
	a.lastPropose = a.cfg.Now()
	a.countKnownPeers()
	a.node.Propose()
	a.think(true)
}

// countKnownPeers raises the quorum of plain "consensus" to a majority of the peers the
// mesh knows, when that is more than the initial peers: a peer relaunched without
// arguments, its database lost, must not agree with itself alone on a new ring. Raising a
// quorum only ever makes this proposer wait for more acceptances, never fewer.
func (a *Allocator) countKnownPeers() {
	if !a.cfg.plainConsensus {
		return
	}
	pc, ok := a.cfg.Peers.(PeerCounter)
	if !ok {
		return
	}
	if q := pc.NumPeers()/2 + 1; a.node.RaiseQuorum(q) {
		a.log.Info("consensus quorum raised to a majority of the peers known", logx.KeyCount, q)
	}
}

// think advances Paxos and seeds the ring once it decided.
func (a *Allocator) think(announce bool) {
	changed := a.node.Think() || announce
	// An acceptor's promises must survive a restart, or a restarted peer could vote for
	// two different values; unlock saves them before anything is sent.
	a.dirtyPaxos = a.dirtyPaxos || changed
	if v, ok := a.node.Consensus(); ok {
		if err := a.ring.Seed(v); err != nil {
			a.log.Error("seeding ring from consensus", logx.KeyErr, err)
			return
		}
		a.log.Info("consensus reached; ring seeded", logx.KeyPeer, v)
		a.proposing = false
		a.ringChanged()
		a.broadcastRing()
		return
	}
	if changed {
		a.outbox = append(a.outbox, outMsg{broadcast: true, data: &gossipData{paxos: a.node.State()}})
	}
}

func (a *Allocator) handlePaxos(s paxos.State) {
	if !a.ring.Empty() {
		// Tell the elector the election is over, at most once per tick.
		if a.cfg.Now().Sub(a.lastRingTx) >= a.cfg.tick {
			a.broadcastRing()
		}
		return
	}
	if a.node == nil {
		return
	}
	if a.node.Update(s) {
		a.lastLearned = a.cfg.Now()
	}
	if !a.proposing {
		a.startConsensus()
		return
	}
	a.think(false)
}

// Prime starts consensus now instead of at the first allocation.
func (a *Allocator) Prime() {
	a.mu.Lock()
	a.startConsensus()
	a.unlock()
}
