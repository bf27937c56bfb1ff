package paxos

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/weavemesh/weave/mesh"
)

// ErrInvalid is returned (wrapped) for undecodable state.
var ErrInvalid = errors.New("invalid paxos state")

// Limits that keep a hostile message from making us allocate much.
const (
	maxNodes  = 4096
	maxValues = 4096
)

// Wire form (big-endian): 'P' 1 | n u16 | n × (node | promise | accepted proposal | nvalue u16
// | values), where node = name 6 + uid 8 and a proposal = round u32 + node.
const nodeLen = 6 + 8

func appendNode(b []byte, id NodeID) []byte {
	pb := id.Name.Bytes()
	b = append(b, pb[:]...)
	return binary.BigEndian.AppendUint64(b, id.UID)
}

func appendProposal(b []byte, p ProposalID) []byte {
	b = binary.BigEndian.AppendUint32(b, p.Round)
	return appendNode(b, p.Proposer)
}

// Encode returns the wire form of s, nodes in a fixed order.
func (s State) Encode() []byte {
	ids := slices.SortedFunc(maps.Keys(s), NodeID.compare)
	b := []byte{'P', 1}
	b = binary.BigEndian.AppendUint16(b, uint16(len(ids)))
	for _, id := range ids {
		c := s[id]
		b = appendNode(b, id)
		b = appendProposal(b, c.Promise)
		b = appendProposal(b, c.Accepted.Proposal)
		b = binary.BigEndian.AppendUint16(b, uint16(len(c.Accepted.Value)))
		for _, v := range c.Accepted.Value {
			pb := v.Bytes()
			b = append(b, pb[:]...)
		}
	}
	return b
}

type reader struct {
	b   []byte
	err error
}

func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b) < n {
		r.err = fmt.Errorf("%w: truncated", ErrInvalid)
		return nil
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

func (r *reader) node() NodeID {
	p := r.take(nodeLen)
	if p == nil {
		return NodeID{}
	}
	return NodeID{Name: mesh.PeerNameFromBytes(p), UID: binary.BigEndian.Uint64(p[6:])}
}

func (r *reader) proposal() ProposalID {
	p := r.take(4)
	if p == nil {
		return ProposalID{}
	}
	return ProposalID{Round: binary.BigEndian.Uint32(p), Proposer: r.node()}
}

// Decode parses a state.
func Decode(b []byte) (State, error) {
	r := &reader{b: b}
	h := r.take(4)
	if h == nil {
		return nil, fmt.Errorf("decode paxos: %w", r.err)
	}
	if h[0] != 'P' || h[1] != 1 {
		return nil, fmt.Errorf("decode paxos: %w: bad header", ErrInvalid)
	}
	n := int(binary.BigEndian.Uint16(h[2:]))
	if n > maxNodes {
		return nil, fmt.Errorf("decode paxos: %w: %d nodes", ErrInvalid, n)
	}
	s := make(State, min(n, len(b)/nodeLen+1))
	for range n {
		id := r.node()
		var c Claims
		c.Promise = r.proposal()
		c.Accepted.Proposal = r.proposal()
		nvb := r.take(2)
		if r.err != nil {
			return nil, fmt.Errorf("decode paxos: %w", r.err)
		}
		nv := int(binary.BigEndian.Uint16(nvb))
		if nv > maxValues {
			return nil, fmt.Errorf("decode paxos: %w: %d values", ErrInvalid, nv)
		}
		vb := r.take(nv * 6)
		if r.err != nil {
			return nil, fmt.Errorf("decode paxos: %w", r.err)
		}
		for i := range nv {
			v := mesh.PeerNameFromBytes(vb[i*6:])
			if v == mesh.UnknownPeerName {
				return nil, fmt.Errorf("decode paxos: %w: unnamed value", ErrInvalid)
			}
			c.Accepted.Value = append(c.Accepted.Value, v)
		}
		if id.Name == mesh.UnknownPeerName {
			return nil, fmt.Errorf("decode paxos: %w: unnamed node", ErrInvalid)
		}
		if _, dup := s[id]; dup {
			return nil, fmt.Errorf("decode paxos: %w: node %v twice", ErrInvalid, id.Name)
		}
		s[id] = c
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("decode paxos: %w: %d trailing bytes", ErrInvalid, len(r.b))
	}
	return s, nil
}
