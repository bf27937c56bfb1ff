package netlab

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// TestRawFrames checks the hand-made frames against the fields a receiver reads: a frame a
// kernel would drop for a bad checksum or length would make an injection test pass for the
// wrong reason.
func TestRawFrames(t *testing.T) {
	src := [6]byte{0x02, 0xba, 0xd0, 0, 0, 1}
	dst := [6]byte{0x02, 0, 0, 0, 0, 2}
	e := ICMPEcho(dst, src, netip.MustParseAddr("10.32.9.9"), netip.MustParseAddr("10.32.1.1"), 7, 1, []byte("hello"))
	if [6]byte(e[0:6]) != dst || [6]byte(e[6:12]) != src || binary.BigEndian.Uint16(e[12:]) != EtherTypeIPv4 {
		t.Fatalf("ethernet header % x", e[:14])
	}
	ip := e[14:]
	if checksum(ip[:20]) != 0 {
		t.Fatal("IPv4 header checksum does not verify")
	}
	if int(binary.BigEndian.Uint16(ip[2:])) != len(ip) {
		t.Fatalf("IPv4 total length %d, frame carries %d", binary.BigEndian.Uint16(ip[2:]), len(ip))
	}
	if ip[20] != 8 || checksum(ip[20:]) != 0 {
		t.Fatal("ICMP echo type or checksum wrong")
	}
	a := GratuitousARP(src, netip.MustParseAddr("10.32.2.1"))
	if [6]byte(a[0:6]) != Broadcast || binary.BigEndian.Uint16(a[12:]) != EtherTypeARP || len(a) != 14+28 {
		t.Fatalf("arp frame % x", a)
	}
	if [6]byte(a[22:28]) != src || netip.AddrFrom4([4]byte(a[28:32])).String() != "10.32.2.1" || [4]byte(a[38:42]) != [4]byte(a[28:32]) {
		t.Fatalf("arp body % x", a[14:])
	}
	v := VXLAN(0xabcdef, a)
	if v[0] != 0x08 || binary.BigEndian.Uint32(v[4:])>>8 != 0xabcdef || v[7] != 0 || len(v) != 8+len(a) {
		t.Fatalf("vxlan header % x", v[:8])
	}
	// An odd length takes the last byte as the high half of a word.
	if got := checksum([]byte{0x01}); got != ^uint16(0x0100) {
		t.Fatalf("odd checksum %#x", got)
	}
}
