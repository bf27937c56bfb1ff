package mesh

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// PeerName identifies a peer: 48 bits, printed like a MAC address ("aa:bb:cc:dd:ee:ff").
// The zero value is UnknownPeerName and never names a real peer.
type PeerName uint64

// UnknownPeerName is the zero PeerName.
const UnknownPeerName PeerName = 0

const peerNameBits = 48

// ErrInvalidPeerName is returned (wrapped) for text that is not a peer name.
var ErrInvalidPeerName = errors.New("invalid peer name")

// ParsePeerName accepts the full MAC form ("aa:bb:cc:dd:ee:ff") and the "::"-compressed form
// Weave used ("::1" is 00:00:00:00:00:01).
func ParsePeerName(s string) (PeerName, error) {
	groups := strings.Split(s, ":")
	if strings.Contains(s, "::") {
		i := strings.Index(s, "::")
		if strings.Contains(s[i+2:], "::") {
			return 0, fmt.Errorf("%w %q: more than one '::'", ErrInvalidPeerName, s)
		}
		head := splitNonEmpty(s[:i])
		tail := splitNonEmpty(s[i+2:])
		if len(head)+len(tail) > 5 {
			return 0, fmt.Errorf("%w %q: too many groups", ErrInvalidPeerName, s)
		}
		groups = append(head, make([]string, 6-len(head)-len(tail))...)
		for j := len(head); j < 6-len(tail); j++ {
			groups[j] = "0"
		}
		groups = append(groups, tail...)
	}
	if len(groups) != 6 {
		return 0, fmt.Errorf("%w %q: want 6 groups", ErrInvalidPeerName, s)
	}
	var v uint64
	for _, g := range groups {
		if len(g) == 0 || len(g) > 2 {
			return 0, fmt.Errorf("%w %q: bad group %q", ErrInvalidPeerName, s, g)
		}
		b, err := strconv.ParseUint(g, 16, 8)
		if err != nil {
			return 0, fmt.Errorf("%w %q: %v", ErrInvalidPeerName, s, err)
		}
		v = v<<8 | b
	}
	if v == 0 {
		return 0, fmt.Errorf("%w %q: zero", ErrInvalidPeerName, s)
	}
	return PeerName(v), nil
}

func splitNonEmpty(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ":")
}

// String prints the name as a MAC address.
func (n PeerName) String() string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(n))
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", b[2], b[3], b[4], b[5], b[6], b[7])
}

// Bytes returns the 6-byte wire form.
func (n PeerName) Bytes() [6]byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(n))
	return [6]byte(b[2:])
}

// PeerNameFromBytes decodes the 6-byte wire form; b must hold at least 6 bytes.
func PeerNameFromBytes(b []byte) PeerName {
	_ = b[5]
	return PeerName(uint64(b[0])<<40 | uint64(b[1])<<32 | uint64(b[2])<<24 | uint64(b[3])<<16 | uint64(b[4])<<8 | uint64(b[5]))
}

// MarshalText implements encoding.TextMarshaler so names appear as MACs in JSON.
func (n PeerName) MarshalText() ([]byte, error) { return []byte(n.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (n *PeerName) UnmarshalText(b []byte) error {
	v, err := ParsePeerName(string(b))
	if err != nil {
		return err
	}
	*n = v
	return nil
}
