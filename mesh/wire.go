package mesh

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Message tags: the first byte of every message on a mesh connection.
// WARNING: only append. The values are part of the protocol; 1..3 stay reserved because
// Weave used them for legacy sleeve control messages.
const (
	tagHeartbeat       byte = 0
	tagGossip          byte = 4 // channel, sender, payload: periodic full state / neighbour subset
	tagGossipUnicast   byte = 5 // channel, src, dst, payload: relayed along unicastAll routes
	tagGossipBroadcast byte = 6 // channel, origin, payload: relayed along the origin's tree
	tagOverlayControl  byte = 7 // opaque payload for the data-plane overlay of this connection
	tagTopoUpdate      byte = 8 // peer entries pushed to a neighbour
	tagTopoBroadcast   byte = 9 // origin, peer entries: relayed along the origin's tree
	tagTopoDigest      byte = 10
	tagTopoRequest     byte = 11
	tagTopoHash        byte = 12
	tagNameInUse       byte = 13 // uid, started, heard-ago: sent before refusing a second peer with one name
	tagRefused         byte = 14 // reason: sent before closing a connection we refuse
)

// Decoder limits: a hostile peer can claim any count, so every count is bounded before
// anything is allocated for it.
const (
	maxPeers        = 1 << 16
	maxConnsPerPeer = 1 << 14
	maxNickLen      = 255
	maxAddrLen      = 255
	maxChannelLen   = 64
	// maxUpdateChunk bounds one encoded topology update so full-state pushes stay far below
	// the connection's maximum message size.
	maxUpdateChunk = 1 << 20
)

// ErrMalformed is wrapped by every decoding error of mesh messages.
var ErrMalformed = errors.New("malformed mesh message")

type wbuf struct{ b []byte }

func (w *wbuf) u8(v byte)    { w.b = append(w.b, v) }
func (w *wbuf) u64(v uint64) { w.b = binary.BigEndian.AppendUint64(w.b, v) }
func (w *wbuf) uvarint(v uint64) {
	w.b = binary.AppendUvarint(w.b, v)
}
func (w *wbuf) name(n PeerName) { b := n.Bytes(); w.b = append(w.b, b[:]...) }
func (w *wbuf) str8(s string) {
	if len(s) > 255 {
		s = s[:255]
	}
	w.b = append(w.b, byte(len(s)))
	w.b = append(w.b, s...)
}

// rbuf reads with bounds checks; the first failure sticks, so callers check err once.
type rbuf struct {
	b   []byte
	err error
}

func (r *rbuf) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: short or bad %s", ErrMalformed, what)
	}
	r.b = nil
}

func (r *rbuf) u8(what string) byte {
	if len(r.b) < 1 {
		r.fail(what)
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *rbuf) u64(what string) uint64 {
	if len(r.b) < 8 {
		r.fail(what)
		return 0
	}
	v := binary.BigEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}

func (r *rbuf) uvarint(what string) uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail(what)
		return 0
	}
	r.b = r.b[n:]
	return v
}

// count reads a uvarint count and refuses it above max or above what the remaining bytes
// could possibly hold (each item at least minItem bytes).
func (r *rbuf) count(what string, max, minItem int) int {
	v := r.uvarint(what)
	if r.err != nil {
		return 0
	}
	if v > uint64(max) || (minItem > 0 && v > uint64(len(r.b)/minItem)) {
		r.fail(what + " count")
		return 0
	}
	return int(v)
}

func (r *rbuf) name(what string) PeerName {
	if len(r.b) < 6 {
		r.fail(what)
		return 0
	}
	n := PeerNameFromBytes(r.b)
	r.b = r.b[6:]
	return n
}

func (r *rbuf) str8(what string, max int) string {
	l := int(r.u8(what))
	if r.err != nil {
		return ""
	}
	if l > max || l > len(r.b) {
		r.fail(what)
		return ""
	}
	s := string(r.b[:l])
	r.b = r.b[l:]
	return s
}

func (r *rbuf) rest() []byte {
	b := r.b
	r.b = nil
	return b
}

func (r *rbuf) end(what string) error {
	if r.err == nil && len(r.b) != 0 {
		r.err = fmt.Errorf("%w: %d trailing bytes in %s", ErrMalformed, len(r.b), what)
	}
	return r.err
}
