package fastdp

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/weavemesh/weave/mesh"
)

var testSrc = [6]byte{0x02, 0, 0, 0, 0, 1}

func TestBeatRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		b    beat
		size int
	}{
		{beat{sender: 0x0102030405, seq: 7, addr: netip.MustParseAddr("10.201.0.1")}, 0},
		{beat{sender: 1, seq: 1<<63 + 5, full: true}, 1450 + ethHeaderLen},
		{beat{sender: 2, seq: 3, addr: netip.MustParseAddr("fd00::1"), full: true}, 9000},
	} {
		frame := appendBeat(nil, testSrc, tc.b, tc.size)
		if want := max(tc.size, MinBeatFrame); len(frame) != want {
			t.Fatalf("frame of %d bytes, want %d", len(frame), want)
		}
		got, err := parseBeat(frame)
		if err != nil {
			t.Fatalf("parse %+v: %v", tc.b, err)
		}
		if got != tc.b {
			t.Fatalf("round trip: got %+v, want %+v", got, tc.b)
		}
	}
}

func TestBeatRefused(t *testing.T) {
	good := appendBeat(nil, testSrc, beat{sender: 1, seq: 2, full: true}, 200)
	mutate := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	for _, tc := range []struct {
		name  string
		frame []byte
		want  error
	}{
		{"short", good[:MinBeatFrame-1], ErrShort},
		{"truncated", good[:150], ErrBadMsg},
		{"padded", append(append([]byte(nil), good...), 0), ErrBadMsg},
		{"unicast dst", mutate(func(b []byte) []byte { b[0] = 0x02; return b }), ErrBadMsg},
		{"ethertype", mutate(func(b []byte) []byte { b[13] = 0; return b }), ErrBadMsg},
		{"magic", mutate(func(b []byte) []byte { b[14] = 'X'; return b }), ErrBadMsg},
		{"version", mutate(func(b []byte) []byte { b[18] = 9; return b }), ErrVersion},
		{"kind", mutate(func(b []byte) []byte { b[19] = kindAck; return b }), ErrBadMsg},
	} {
		if _, err := parseBeat(tc.frame); !errors.Is(err, tc.want) {
			t.Errorf("%s: err %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestAckRoundTrip(t *testing.T) {
	for _, a := range []ack{
		{seq: 1},
		{seq: 99, full: true, nat: true, seen: netip.MustParseAddr("10.201.0.3")},
		{seq: 1 << 62, seen: netip.MustParseAddr("fd00::2")},
	} {
		msg := appendAck(nil, a)
		if !IsControl(msg) {
			t.Fatalf("IsControl(%x) = false", msg)
		}
		got, err := parseAck(msg)
		if err != nil || got != a {
			t.Fatalf("round trip %+v: got %+v, %v", a, got, err)
		}
	}
	if _, err := parseAck(appendAck(nil, ack{})[:ackLen-1]); !errors.Is(err, ErrShort) {
		t.Fatalf("short ack: %v", err)
	}
	if IsControl([]byte("WV")) || IsControl([]byte("sleeve")) {
		t.Fatal("IsControl accepts foreign messages")
	}
}

func FuzzParseBeat(f *testing.F) {
	f.Add(appendBeat(nil, testSrc, beat{sender: 1, seq: 2}, 0))
	f.Add(appendBeat(nil, testSrc, beat{sender: mesh.PeerName(3), seq: 4, full: true, addr: netip.MustParseAddr("10.0.0.1")}, 300))
	f.Add([]byte{})
	f.Add(make([]byte, MinBeatFrame))
	f.Fuzz(func(t *testing.T, frame []byte) {
		b, err := parseBeat(frame)
		if err != nil {
			return
		}
		// Whatever is accepted re-encodes to the same bytes, apart from the source MAC and
		// the reserved and padding bytes.
		again := appendBeat(nil, [6]byte(frame[6:12]), b, len(frame))
		if b2, err := parseBeat(again); err != nil || b2 != b {
			t.Fatalf("re-encoded %+v parses as %+v, %v", b, b2, err)
		}
	})
}

func FuzzParseAck(f *testing.F) {
	f.Add(appendAck(nil, ack{seq: 5, full: true}))
	f.Add(appendAck(nil, ack{seq: 6, nat: true, seen: netip.MustParseAddr("10.201.0.2")}))
	f.Add([]byte("WVFD"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		a, err := parseAck(msg)
		if err != nil {
			return
		}
		if a2, err := parseAck(appendAck(nil, a)); err != nil || a2 != a {
			t.Fatalf("re-encoded %+v parses as %+v, %v", a, a2, err)
		}
	})
}
