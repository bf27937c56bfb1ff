package fastdp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/weavemesh/weave/mesh"
)

// Heartbeats are Ethernet frames sent into the VXLAN device, so the kernel's own encap path
// (FDB lookup, UDP on the VXLAN port, DF) carries them. Their destination is a link-local
// group address: the kernel replicates each frame to every peer that has an FDB entry for
// it (one per peer, independent of whether the peer carries traffic yet), and a Linux
// bridge never forwards 01:80:c2:00:00:0e to its other ports, so the containers never
// see a heartbeat; it is passed up on the VXLAN device, where our packet socket reads it.
var heartbeatMAC = [6]byte{0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e}

// EtherType of heartbeat frames: IEEE 802 local experimental EtherType 1.
const etherType = 0x88b5

const (
	magic        = "WVFD"
	wireVersion  = 1
	kindBeat     = 1
	kindAck      = 2
	flagFull     = 1 << 0 // the heartbeat is full size (MTU): it proves the path MTU
	flagNAT      = 1 << 1 // ack: your heartbeat's sender address is not the one we reach you at
	ethHeaderLen = 14
	// beat: magic, version, kind, flags, reserved, sender(8), seq(8), sender addr(16), length(2)
	beatLen = 4 + 4 + 8 + 8 + 16 + 2
	// MinBeatFrame is the size of a small heartbeat frame.
	MinBeatFrame = ethHeaderLen + beatLen
	// ack: magic, version, kind, flags, reserved, seq(8), the heartbeat sender's address as
	// the acknowledger reaches it (16)
	ackLen = 4 + 4 + 8 + 16
)

// Errors of the decoders; wrapped with details.
var (
	ErrShort   = errors.New("fastdp: message too short")
	ErrBadMsg  = errors.New("fastdp: not a fastdp message")
	ErrVersion = errors.New("fastdp: unsupported version")
)

// beat is a decoded heartbeat.
type beat struct {
	sender mesh.PeerName
	seq    uint64
	addr   netip.Addr // the sender's own underlay address, as it sees it
	full   bool
}

// appendBeat writes a heartbeat frame of total size size (at least MinBeatFrame) into
// buf[:0] and returns it. The declared length lets the receiver detect truncation.
func appendBeat(buf []byte, src [6]byte, b beat, size int) []byte {
	size = max(size, MinBeatFrame)
	buf = append(buf[:0], make([]byte, size)...)
	copy(buf[0:6], heartbeatMAC[:])
	copy(buf[6:12], src[:])
	binary.BigEndian.PutUint16(buf[12:14], etherType)
	p := buf[ethHeaderLen:]
	copy(p, magic)
	p[4] = wireVersion
	p[5] = kindBeat
	if b.full {
		p[6] = flagFull
	}
	binary.BigEndian.PutUint64(p[8:16], uint64(b.sender))
	binary.BigEndian.PutUint64(p[16:24], b.seq)
	if b.addr.IsValid() {
		a16 := b.addr.As16()
		copy(p[24:40], a16[:])
	}
	binary.BigEndian.PutUint16(p[40:42], uint16(size))
	return buf
}

// parseBeat decodes a heartbeat frame (Ethernet header included). The bytes come from
// the network and are checked before use.
func parseBeat(frame []byte) (beat, error) {
	if len(frame) < MinBeatFrame {
		return beat{}, fmt.Errorf("heartbeat of %d bytes: %w", len(frame), ErrShort)
	}
	if [6]byte(frame[0:6]) != heartbeatMAC || binary.BigEndian.Uint16(frame[12:14]) != etherType {
		return beat{}, fmt.Errorf("heartbeat header: %w", ErrBadMsg)
	}
	p := frame[ethHeaderLen:]
	if string(p[0:4]) != magic || p[5] != kindBeat {
		return beat{}, fmt.Errorf("heartbeat body: %w", ErrBadMsg)
	}
	if p[4] != wireVersion {
		return beat{}, fmt.Errorf("heartbeat version %d: %w", p[4], ErrVersion)
	}
	if n := int(binary.BigEndian.Uint16(p[40:42])); n != len(frame) {
		return beat{}, fmt.Errorf("heartbeat declares %d bytes, has %d: %w", n, len(frame), ErrBadMsg)
	}
	b := beat{
		sender: mesh.PeerName(binary.BigEndian.Uint64(p[8:16])),
		seq:    binary.BigEndian.Uint64(p[16:24]),
		full:   p[6]&flagFull != 0,
	}
	if a := netip.AddrFrom16([16]byte(p[24:40])).Unmap(); !a.IsUnspecified() {
		b.addr = a
	}
	return b, nil
}

// ack acknowledges a heartbeat over the mesh control channel.
type ack struct {
	seq  uint64
	full bool
	nat  bool
	// seen is where the acknowledger reaches the heartbeat's sender; the sender compares it
	// with its own address on the connection to detect a NAT in front of itself.
	seen netip.Addr
}

func appendAck(buf []byte, a ack) []byte {
	var p [ackLen]byte
	copy(p[:], magic)
	p[4] = wireVersion
	p[5] = kindAck
	if a.full {
		p[6] |= flagFull
	}
	if a.nat {
		p[6] |= flagNAT
	}
	binary.BigEndian.PutUint64(p[8:16], a.seq)
	if a.seen.IsValid() {
		a16 := a.seen.As16()
		copy(p[16:32], a16[:])
	}
	return append(buf, p[:]...)
}

// IsControl reports whether an overlay control message belongs to fastdp, so an overlay
// hook shared with sleeve can route it (fastdp messages start with "WVFD").
func IsControl(msg []byte) bool { return len(msg) >= 4 && string(msg[:4]) == magic }

func parseAck(msg []byte) (ack, error) {
	if len(msg) < ackLen {
		return ack{}, fmt.Errorf("ack of %d bytes: %w", len(msg), ErrShort)
	}
	if string(msg[0:4]) != magic || msg[5] != kindAck {
		return ack{}, fmt.Errorf("ack: %w", ErrBadMsg)
	}
	if msg[4] != wireVersion {
		return ack{}, fmt.Errorf("ack version %d: %w", msg[4], ErrVersion)
	}
	a := ack{seq: binary.BigEndian.Uint64(msg[8:16]), full: msg[6]&flagFull != 0, nat: msg[6]&flagNAT != 0}
	if seen := netip.AddrFrom16([16]byte(msg[16:32])).Unmap(); !seen.IsUnspecified() {
		a.seen = seen
	}
	return a, nil
}
