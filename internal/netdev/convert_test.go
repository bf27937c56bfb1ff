package netdev

import (
	"net"
	"net/netip"
	"testing"
)

func TestPrefixRoundTrip(t *testing.T) {
	for _, s := range []string{"10.32.0.7/12", "192.168.1.1/32", "fd00::1/64"} {
		p := netip.MustParsePrefix(s)
		got, ok := Prefix(IPNet(p))
		if !ok || got != p {
			t.Errorf("%s: round trip gave %v %v", s, got, ok)
		}
	}
	// A 16-byte IPv4-mapped address comes back as IPv4.
	got, ok := Prefix(&net.IPNet{IP: net.ParseIP("10.1.2.3"), Mask: net.CIDRMask(24, 32)})
	if !ok || got.String() != "10.1.2.3/24" {
		t.Errorf("mapped: %v %v", got, ok)
	}
	if _, ok := Prefix(&net.IPNet{IP: net.IP{1, 2}, Mask: nil}); ok {
		t.Error("malformed address accepted")
	}
}
