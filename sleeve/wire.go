package sleeve

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/weavemesh/weave/mesh"
)

// Datagram format (Weave's sleeve layout; all integers big-endian):
//
//	plain:  [sender peer 6] record...
//	sealed: [sender peer 6][seq 8] AEAD(record...)        (secretbox or AES-256-GCM, +16 tag)
//	record: [src peer 6][dst peer 6][length 2][Ethernet frame]
//
// The sender is the neighbour that sent the datagram (it selects the connection and its
// keys); src and dst are the peers that captured the frame and that it is for, so a relay
// forwards records unchanged. A record with src = dst = 0 is a control message between the
// two neighbours (heartbeat, MTU probe, probe ack), never relayed. A record with dst = 0
// and src = sender is a frame the sender's kernel path (fastdp) already delivered to us: we
// pass it on along src's broadcast tree without delivering it again (overlay.Frame's
// Delivered); a receiver that does not know this drops it as malformed.
const (
	nameLen         = 6
	seqLen          = 8
	tagLen          = 16
	recordHeaderLen = 2*nameLen + 2
	plainHeaderLen  = nameLen
	sealedHeaderLen = nameLen + seqLen
	udpIPv4Overhead = 28
	udpIPv6Overhead = 48

	// OverheadPlain and OverheadSealed are what the sleeve adds to an Ethernet frame on an
	// IPv4 underlay, counting IP and UDP: the IP MTU inside is the underlay MTU minus these
	// minus the inner Ethernet header (14), i.e. Weave's 62 and 86.
	OverheadPlain  = udpIPv4Overhead + plainHeaderLen + recordHeaderLen
	OverheadSealed = udpIPv4Overhead + sealedHeaderLen + tagLen + recordHeaderLen

	// maxDatagram is the largest UDP payload we send or accept.
	maxDatagram = 65535 - udpIPv4Overhead
)

// Control message kinds (first byte of a control record's payload).
const (
	ctlHeartbeat = 1 // [kind][connID 8][flags 1][super-frames received 4][lost 4]
	ctlProbe     = 2 // [kind][connID 8][size 2][padding]
	ctlProbeAck  = 3 // [kind][connID 8][size 2]

	hbHeardYou = 1 // heartbeat flag: the sender has heard a valid heartbeat from us

	ctlHeartbeatLen    = 1 + 8 + 1
	ctlHeartbeatGSOLen = ctlHeartbeatLen + 8
	ctlProbeMinLen     = 1 + 8 + 2
)

// errMalformed is wrapped by every decoding error.
var errMalformed = errors.New("malformed sleeve datagram")

func putName(b []byte, n mesh.PeerName) {
	_ = b[5]
	v := uint64(n)
	b[0], b[1], b[2], b[3], b[4], b[5] = byte(v>>40), byte(v>>32), byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
}

func getName(b []byte) mesh.PeerName {
	_ = b[5]
	return mesh.PeerName(uint64(b[0])<<40 | uint64(b[1])<<32 | uint64(b[2])<<24 | uint64(b[3])<<16 |
		uint64(b[4])<<8 | uint64(b[5]))
}

// putRecord writes a record header and returns the bytes after it, where the frame goes.
func putRecord(b []byte, src, dst mesh.PeerName, n int) []byte {
	putName(b[0:6], src)
	putName(b[6:12], dst)
	binary.BigEndian.PutUint16(b[12:14], uint16(n))
	return b[recordHeaderLen : recordHeaderLen+n]
}

// nextRecord decodes the record at the start of b and returns it and what follows.
func nextRecord(b []byte) (src, dst mesh.PeerName, payload, rest []byte, err error) {
	if len(b) < recordHeaderLen {
		return 0, 0, nil, nil, fmt.Errorf("record header: %d bytes: %w", len(b), errMalformed)
	}
	n := int(binary.BigEndian.Uint16(b[12:14]))
	if len(b)-recordHeaderLen < n {
		return 0, 0, nil, nil, fmt.Errorf("record of %d bytes, %d left: %w", n, len(b)-recordHeaderLen, errMalformed)
	}
	src, dst = getName(b[0:6]), getName(b[6:12])
	return src, dst, b[recordHeaderLen : recordHeaderLen+n], b[recordHeaderLen+n:], nil
}
