// Package paxos is the single-decree Paxos that lets the initial peers agree who splits the
// empty allocation range first (Weave's "consensus" bootstrap).
//
// Messages are not sent point to point: every node gossips what it knows of every node's
// promise and accepted value, and merging keeps each node's highest claims. A proposer sees
// promises and acceptances appear in that shared state. A node is a (peer name, process UID)
// pair, so a peer that restarts mid-election cannot vote twice.
package paxos

import (
	"cmp"
	"slices"

	"github.com/weavemesh/weave/mesh"
)

// NodeID identifies one participant (one run of one peer).
type NodeID struct {
	Name mesh.PeerName
	UID  uint64
}

func (a NodeID) compare(b NodeID) int {
	if c := cmp.Compare(a.Name, b.Name); c != 0 {
		return c
	}
	return cmp.Compare(a.UID, b.UID)
}

// ProposalID orders proposals: by round, then proposer. Round 0 is "none".
type ProposalID struct {
	Round    uint32
	Proposer NodeID
}

// Less reports whether p is ordered before q.
func (p ProposalID) Less(q ProposalID) bool {
	if p.Round != q.Round {
		return p.Round < q.Round
	}
	return p.Proposer.compare(q.Proposer) < 0
}

// IsZero reports whether p is no proposal.
func (p ProposalID) IsZero() bool { return p.Round == 0 }

// Accepted is a value a node accepted, with the proposal that carried it.
type Accepted struct {
	Proposal ProposalID
	Value    []mesh.PeerName
}

// Claims is what one node has promised and accepted.
type Claims struct {
	Promise  ProposalID
	Accepted Accepted
}

// State is everyone's claims as one node knows them.
type State map[NodeID]Claims

// Merge folds o into s, keeping each node's highest claims (a node's claims only grow), and
// reports whether s changed.
func (s State) Merge(o State) bool {
	changed := false
	for id, oc := range o {
		c, ok := s[id]
		if !ok {
			s[id] = Claims{Promise: oc.Promise, Accepted: Accepted{oc.Accepted.Proposal, slices.Clone(oc.Accepted.Value)}}
			changed = true
			continue
		}
		if c.Promise.Less(oc.Promise) {
			c.Promise = oc.Promise
			changed = true
		}
		if c.Accepted.Proposal.Less(oc.Accepted.Proposal) {
			c.Accepted = Accepted{oc.Accepted.Proposal, slices.Clone(oc.Accepted.Value)}
			changed = true
		}
		s[id] = c
	}
	return changed
}

// Clone returns a deep copy.
func (s State) Clone() State {
	out := make(State, len(s))
	out.Merge(s)
	return out
}

// Node is one elector.
type Node struct {
	id     NodeID
	quorum int
	knows  State
}

// NewNode returns an elector that needs quorum acceptances (a majority of the initial
// peers) to decide.
func NewNode(id NodeID, quorum int) *Node {
	return &Node{id: id, quorum: max(quorum, 1), knows: State{id: {}}}
}

// ID returns the node's identity.
func (n *Node) ID() NodeID { return n.id }

// Quorum returns the number of acceptances needed.
func (n *Node) Quorum() int { return n.quorum }

// RaiseQuorum makes the node need at least q acceptances and reports whether that changed
// anything. It never lowers the quorum: a node never decides on fewer acceptances than it
// was created with.
func (n *Node) RaiseQuorum(q int) bool {
	if q <= n.quorum {
		return false
	}
	n.quorum = q
	return true
}

// State returns a copy of everything the node knows, for gossip.
func (n *Node) State() State { return n.knows.Clone() }

// Update merges gossip from another node and reports whether anything was new.
func (n *Node) Update(o State) bool { return n.knows.Merge(o) }

// Propose starts a new round above every round seen so far.
func (n *Node) Propose() {
	var top uint32
	for _, c := range n.knows {
		top = max(top, c.Promise.Round, c.Accepted.Proposal.Round)
	}
	me := n.knows[n.id]
	me.Promise = ProposalID{Round: top + 1, Proposer: n.id}
	n.knows[n.id] = me
}

// Think plays the acceptor and proposer roles on what the node knows and reports whether its
// own claims changed (so they should be gossiped).
func (n *Node) Think() bool {
	me := n.knows[n.id]
	before := me
	// Acceptor: promise the highest proposal seen (a proposer's own promise is its prepare).
	for _, c := range n.knows {
		if me.Promise.Less(c.Promise) {
			me.Promise = c.Promise
		}
	}
	// Acceptor: a proposer accepting its own proposal is its accept request; honour it if
	// it is the proposal we promised.
	if p := me.Promise; p.Proposer != n.id && !p.IsZero() {
		if prop, ok := n.knows[p.Proposer]; ok && prop.Accepted.Proposal == p && me.Accepted.Proposal.Less(p) {
			me.Accepted = Accepted{p, slices.Clone(prop.Accepted.Value)}
		}
	}
	// Proposer: with a quorum of promises for our proposal, accept it ourselves, carrying
	// the highest value any promiser accepted before (Paxos's safety rule) or our own.
	if p := me.Promise; p.Proposer == n.id && !p.IsZero() && me.Accepted.Proposal != p {
		promised := 0
		var prior Accepted
		for id, c := range n.knows {
			if id == n.id {
				c = me
			}
			if c.Promise == p {
				promised++
				if prior.Proposal.Less(c.Accepted.Proposal) {
					prior = c.Accepted
				}
			}
		}
		if promised >= n.quorum {
			v := prior.Value
			if prior.Proposal.IsZero() {
				v = n.candidates()
			}
			me.Accepted = Accepted{p, slices.Clone(v)}
		}
	}
	n.knows[n.id] = me
	return me.Promise != before.Promise || me.Accepted.Proposal != before.Accepted.Proposal
}

// candidates is our proposed value: every peer we have heard from, sorted.
func (n *Node) candidates() []mesh.PeerName {
	var out []mesh.PeerName
	for id := range n.knows {
		out = append(out, id.Name)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Consensus returns the decided value once a quorum accepted the same proposal.
func (n *Node) Consensus() ([]mesh.PeerName, bool) {
	count := map[ProposalID]int{}
	for _, c := range n.knows {
		if p := c.Accepted.Proposal; !p.IsZero() {
			count[p]++
			if count[p] >= n.quorum {
				return slices.Clone(c.Accepted.Value), true
			}
		}
	}
	return nil, false
}
