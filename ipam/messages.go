package ipam

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/weavemesh/weave/ipam/addr"
	"github.com/weavemesh/weave/ipam/paxos"
	"github.com/weavemesh/weave/ipam/ring"
	"github.com/weavemesh/weave/mesh"
)

// ErrBadMessage is returned (wrapped) for gossip that does not decode.
var ErrBadMessage = errors.New("ipam: bad message")

// Message types. WARNING: only append; the values are part of the protocol.
const (
	msgRing         byte = 1 // ring wire form (gossip, broadcast, unicast reply)
	msgPaxos        byte = 2 // paxos state (before the ring exists)
	msgSpaceRequest byte = 3 // subnet start u32, end u32: "give me space in here"
	msgSpaceDenied  byte = 4 // subnet start u32, end u32, then the donor's ring
	msgClaim        byte = 5 // address u32: "give me this one address, my container uses it"
	msgClaimDenied  byte = 6 // address u32, reason u8, then the owner's ring
	msgHello        byte = 7 // ring wire form, from a restarted peer: "send me your ring"
)

// Reasons a claim is denied.
const (
	claimInUse    byte = 1 // the owner uses the address (a real conflict)
	claimNotOwner byte = 2 // the owner no longer owns it (ask the new owner)
)

// message is one decoded gossip message.
type message struct {
	kind   byte
	ring   *ring.Ring
	paxos  paxos.State
	subnet addr.Range
	addr   addr.Addr
	reason byte
}

func encodeRing(r *ring.Ring) []byte { return append([]byte{msgRing}, r.Encode()...) }

func encodeHello(r *ring.Ring) []byte { return append([]byte{msgHello}, r.Encode()...) }

func encodePaxos(s paxos.State) []byte { return append([]byte{msgPaxos}, s.Encode()...) }

func encodeSpace(kind byte, sub addr.Range, r *ring.Ring) []byte {
	b := []byte{kind}
	b = binary.BigEndian.AppendUint32(b, uint32(sub.Start))
	b = binary.BigEndian.AppendUint32(b, uint32(sub.End))
	if r != nil {
		b = append(b, r.Encode()...)
	}
	return b
}

func encodeClaim(a addr.Addr) []byte {
	return binary.BigEndian.AppendUint32([]byte{msgClaim}, uint32(a))
}

func encodeClaimDenied(a addr.Addr, reason byte, r *ring.Ring) []byte {
	b := binary.BigEndian.AppendUint32([]byte{msgClaimDenied}, uint32(a))
	b = append(b, reason)
	return append(b, r.Encode()...)
}

// decodeMessage parses any message of the channel; the ring and paxos decoders validate
// their parts.
func decodeMessage(b []byte) (message, error) {
	if len(b) == 0 {
		return message{}, fmt.Errorf("%w: empty", ErrBadMessage)
	}
	m := message{kind: b[0]}
	body := b[1:]
	var err error
	switch m.kind {
	case msgRing, msgHello:
		m.ring, err = ring.Decode(body)
	case msgPaxos:
		m.paxos, err = paxos.Decode(body)
	case msgSpaceRequest, msgSpaceDenied:
		if len(body) < 8 {
			return m, fmt.Errorf("%w: short space message", ErrBadMessage)
		}
		m.subnet = addr.Range{Start: addr.Addr(binary.BigEndian.Uint32(body)), End: addr.Addr(binary.BigEndian.Uint32(body[4:]))}
		if m.subnet.Size() == 0 {
			return m, fmt.Errorf("%w: empty subnet", ErrBadMessage)
		}
		switch {
		case m.kind == msgSpaceDenied:
			m.ring, err = ring.Decode(body[8:])
		case len(body) != 8:
			return m, fmt.Errorf("%w: trailing bytes", ErrBadMessage)
		}
	case msgClaim:
		if len(body) != 4 {
			return m, fmt.Errorf("%w: claim of %d bytes", ErrBadMessage, len(body))
		}
		m.addr = addr.Addr(binary.BigEndian.Uint32(body))
	case msgClaimDenied:
		if len(body) < 5 {
			return m, fmt.Errorf("%w: short claim denial", ErrBadMessage)
		}
		m.addr = addr.Addr(binary.BigEndian.Uint32(body))
		m.reason = body[4]
		if m.reason != claimInUse && m.reason != claimNotOwner {
			return m, fmt.Errorf("%w: claim denial reason %d", ErrBadMessage, m.reason)
		}
		m.ring, err = ring.Decode(body[5:])
	default:
		return m, fmt.Errorf("%w: unknown type %d", ErrBadMessage, m.kind)
	}
	if err != nil {
		return m, fmt.Errorf("%w: %w", ErrBadMessage, err)
	}
	return m, nil
}

// encodeElector saves an elector: its identity (name 6 bytes, UID u64) then its state.
func encodeElector(n *paxos.Node) []byte {
	id := n.ID()
	nb := id.Name.Bytes()
	b := append([]byte{}, nb[:]...)
	b = binary.BigEndian.AppendUint64(b, id.UID)
	return append(b, n.State().Encode()...)
}

func decodeElector(b []byte, quorum int) (*paxos.Node, error) {
	if len(b) < 14 {
		return nil, fmt.Errorf("%w: short elector record", ErrBadMessage)
	}
	id := paxos.NodeID{Name: mesh.PeerNameFromBytes(b), UID: binary.BigEndian.Uint64(b[6:])}
	s, err := paxos.Decode(b[14:])
	if err != nil {
		return nil, err
	}
	n := paxos.NewNode(id, quorum)
	n.Update(s)
	return n, nil
}
