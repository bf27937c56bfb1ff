package ring

import (
	"encoding/binary"
	"fmt"

	"github.com/weavemesh/weave/ipam/addr"
	"github.com/weavemesh/weave/mesh"
)

// Wire form (big-endian), version 1:
//
//	'R' 1 | start u32 | end u32 | nseeds u16 | seeds 6 bytes each | nentries u32 |
//	entries: token u32, peer 6 bytes, version u32, free u32
const (
	codecMagic   = 'R'
	codecVersion = 1
	headerLen    = 2 + 4 + 4 + 2
	seedLen      = 6
	entryLen     = 4 + 6 + 4 + 4
)

// Encode returns the wire form of r.
func (r *Ring) Encode() []byte {
	b := make([]byte, 0, headerLen+seedLen*len(r.Seeds)+4+entryLen*len(r.Entries))
	b = append(b, codecMagic, codecVersion)
	b = binary.BigEndian.AppendUint32(b, uint32(r.Range.Start))
	b = binary.BigEndian.AppendUint32(b, uint32(r.Range.End))
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.Seeds)))
	for _, s := range r.Seeds {
		pb := s.Bytes()
		b = append(b, pb[:]...)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(r.Entries)))
	for _, e := range r.Entries {
		b = binary.BigEndian.AppendUint32(b, uint32(e.Token))
		pb := e.Peer.Bytes()
		b = append(b, pb[:]...)
		b = binary.BigEndian.AppendUint32(b, e.Version)
		b = binary.BigEndian.AppendUint32(b, e.Free)
	}
	return b
}

// Decode parses and validates a ring; it never trusts a length it has not checked against
// the bytes present.
func Decode(b []byte) (*Ring, error) {
	if len(b) < headerLen {
		return nil, fmt.Errorf("decode ring: %w: %d bytes is too short", ErrInvalid, len(b))
	}
	if b[0] != codecMagic || b[1] != codecVersion {
		return nil, fmt.Errorf("decode ring: %w: bad header %x", ErrInvalid, b[:2])
	}
	r := &Ring{Range: addr.Range{Start: addr.Addr(binary.BigEndian.Uint32(b[2:])), End: addr.Addr(binary.BigEndian.Uint32(b[6:]))}}
	ns := int(binary.BigEndian.Uint16(b[10:]))
	b = b[headerLen:]
	if len(b) < ns*seedLen+4 {
		return nil, fmt.Errorf("decode ring: %w: truncated seeds", ErrInvalid)
	}
	if ns > 0 {
		r.Seeds = make([]mesh.PeerName, ns)
	}
	for i := range ns {
		r.Seeds[i] = mesh.PeerNameFromBytes(b[i*seedLen:])
	}
	b = b[ns*seedLen:]
	ne := binary.BigEndian.Uint32(b)
	b = b[4:]
	if uint64(len(b)) != uint64(ne)*entryLen {
		return nil, fmt.Errorf("decode ring: %w: %d entries in %d bytes", ErrInvalid, ne, len(b))
	}
	if ne > 0 {
		r.Entries = make([]Entry, ne)
	}
	for i := range r.Entries {
		p := b[i*entryLen:]
		r.Entries[i] = Entry{
			Token:   addr.Addr(binary.BigEndian.Uint32(p)),
			Peer:    mesh.PeerNameFromBytes(p[4:]),
			Version: binary.BigEndian.Uint32(p[10:]),
			Free:    binary.BigEndian.Uint32(p[14:]),
		}
	}
	if err := r.Check(); err != nil {
		return nil, fmt.Errorf("decode ring: %w", err)
	}
	return r, nil
}
