package ipam

import (
	"fmt"
	"maps"

	"github.com/weavemesh/weave/ipam/addr"
	"github.com/weavemesh/weave/ipam/paxos"
	"github.com/weavemesh/weave/ipam/ring"
	"github.com/weavemesh/weave/mesh"
)

// gossipData is what travels by broadcast and periodic gossip: the ring once it exists,
// the Paxos state before.
type gossipData struct {
	ring  *ring.Ring
	paxos paxos.State
	hello bool // the sender restarted and wants everyone's ring
}

var _ mesh.GossipData = (*gossipData)(nil)

// Encode implements mesh.GossipData.
func (d *gossipData) Encode() [][]byte {
	var out [][]byte
	switch {
	case d.ring != nil && d.hello:
		// Empty from a peer waiting to adopt a ring: "send me yours".
		out = append(out, encodeHello(d.ring))
	case d.ring != nil && !d.ring.Empty():
		out = append(out, encodeRing(d.ring))
	}
	if d.paxos != nil && (d.ring == nil || d.ring.Empty()) {
		out = append(out, encodePaxos(d.paxos))
	}
	return out
}

// Merge implements mesh.GossipData. It keeps the receiver's ring when the other cannot be
// merged: the receiving peer reports that.
func (d *gossipData) Merge(o mesh.GossipData) mesh.GossipData {
	od, ok := o.(*gossipData)
	if !ok || od == nil {
		return d
	}
	switch {
	case d.ring == nil && od.ring != nil:
		d.ring = od.ring.Clone()
	case d.ring != nil && od.ring != nil:
		_, _ = d.ring.Merge(od.ring)
	}
	d.hello = d.hello || od.hello
	if od.paxos != nil {
		if d.paxos == nil {
			d.paxos = paxos.State{}
		}
		d.paxos.Merge(od.paxos)
	}
	return d
}

var _ mesh.Gossiper = (*Allocator)(nil)

func (a *Allocator) decode(b []byte) (message, error) {
	m, err := decodeMessage(b)
	if err != nil {
		a.stats.badMessages.Add(1)
		return m, err
	}
	return m, nil
}

// replyRing sends our ring to src, at most once per tick per peer.
func (a *Allocator) replyRing(src mesh.PeerName) {
	if a.ring.Empty() || src == a.cfg.Name {
		return
	}
	if now := a.cfg.Now(); now.Sub(a.lastReply[src]) >= a.cfg.tick {
		a.lastReply[src] = now
		a.unicast(src, encodeRing(a.ring))
	}
}

// OnGossipUnicast implements mesh.Gossiper.
func (a *Allocator) OnGossipUnicast(src mesh.PeerName, b []byte) error {
	m, err := a.decode(b)
	if err != nil {
		return fmt.Errorf("ipam unicast from %s: %w", src, err)
	}
	a.mu.Lock()
	defer a.unlock()
	if a.closed {
		return nil
	}
	switch m.kind {
	case msgRing:
		// A unicast ring is the answer to a space request (or a claim): the request is over.
		maps.DeleteFunc(a.spaceReqs, func(_ addr.Range, req request) bool { return req.peer == src })
		a.mergeRing(m.ring, src.String())
		a.notify()
	case msgHello:
		a.mergeRing(m.ring, src.String())
		a.replyRing(src)
	case msgPaxos:
		a.handlePaxos(m.paxos)
	case msgSpaceRequest:
		a.handleSpaceRequest(src, m.subnet)
	case msgSpaceDenied:
		a.mergeRing(m.ring, src.String())
		if a.denied[m.subnet] == nil {
			a.denied[m.subnet] = map[mesh.PeerName]bool{}
		}
		a.denied[m.subnet][src] = true
		delete(a.spaceReqs, m.subnet)
		a.notify()
	case msgClaim:
		a.handleClaim(src, m.addr)
	case msgClaimDenied:
		a.mergeRing(m.ring, src.String())
		a.handleClaimDenied(src, m.addr, m.reason)
	}
	return nil
}

// OnGossipBroadcast implements mesh.Gossiper.
func (a *Allocator) OnGossipBroadcast(src mesh.PeerName, b []byte) (mesh.GossipData, error) {
	m, err := a.decode(b)
	if err != nil {
		return nil, fmt.Errorf("ipam broadcast from %s: %w", src, err)
	}
	a.mu.Lock()
	defer a.unlock()
	if a.closed {
		return nil, nil
	}
	switch m.kind {
	case msgHello:
		a.mergeRing(m.ring, src.String())
		a.replyRing(src)
		return &gossipData{ring: m.ring, hello: true}, nil
	case msgRing:
		a.mergeRing(m.ring, src.String())
		// A sender that lacks what we know (typically a peer back from the dead, whose
		// space may have been reclaimed) gets our ring at once rather than at the next
		// periodic gossip; at most once per tick per peer.
		if !a.ring.Equal(m.ring) {
			a.replyRing(src)
		}
		return &gossipData{ring: m.ring}, nil
	case msgPaxos:
		a.handlePaxos(m.paxos)
		return &gossipData{paxos: m.paxos}, nil
	}
	a.stats.badMessages.Add(1)
	return nil, fmt.Errorf("ipam broadcast from %s: %w: type %d is unicast only", src, ErrBadMessage, m.kind)
}

// Gossip implements mesh.Gossiper.
func (a *Allocator) Gossip() mesh.GossipData {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.ring.Empty() {
		return &gossipData{ring: a.ring.Clone()}
	}
	if a.node != nil && a.proposing {
		return &gossipData{paxos: a.node.State()}
	}
	return nil
}

// OnGossip implements mesh.Gossiper.
func (a *Allocator) OnGossip(b []byte) (mesh.GossipData, error) {
	m, err := a.decode(b)
	if err != nil {
		return nil, fmt.Errorf("ipam gossip: %w", err)
	}
	a.mu.Lock()
	defer a.unlock()
	if a.closed {
		return nil, nil
	}
	switch m.kind {
	case msgRing, msgHello:
		if a.mergeRing(m.ring, "gossip") {
			return &gossipData{ring: a.ring.Clone()}, nil
		}
	case msgPaxos:
		// What we learn shows in our own claims, which think broadcasts when they change.
		a.handlePaxos(m.paxos)
	default:
		a.stats.badMessages.Add(1)
		return nil, fmt.Errorf("ipam gossip: %w: type %d is unicast only", ErrBadMessage, m.kind)
	}
	return nil, nil
}
