package udp

import (
	"bytes"
	"net/netip"
	"testing"
)

// The portable Bind is what other systems get; it runs on loopback without root.
func TestStdBindLoopback(t *testing.T) {
	a, err := listenStd(Config{Addr: netip.MustParseAddrPort("127.0.0.1:0")})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := listenStd(Config{Addr: netip.MustParseAddrPort("127.0.0.1:0")})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := a.WriteBatch([][]byte{[]byte("one"), []byte("two")}, b.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	bufs, sizes, eps := [][]byte{make([]byte, 100), make([]byte, 100)}, make([]int, 2), make([]netip.AddrPort, 2)
	for _, want := range []string{"one", "two"} {
		n, err := b.ReadBatch(bufs, sizes, eps)
		if err != nil || n != 1 || !bytes.Equal(bufs[0][:sizes[0]], []byte(want)) || eps[0] != a.LocalAddr() {
			t.Fatalf("ReadBatch = %d, %v, %q from %v", n, err, bufs[0][:sizes[0]], eps[0])
		}
	}
	if err := b.Close(); err != nil || b.Close() != nil {
		t.Fatalf("Close: %v", err)
	}
}

func TestConfigNetwork(t *testing.T) {
	for _, tc := range []struct{ in, network, addr string }{
		{"", "udp4", "0.0.0.0:0"},
		{"0.0.0.0:6783", "udp4", "0.0.0.0:6783"},
		{"[::ffff:10.0.0.1]:1", "udp4", "10.0.0.1:1"},
		{"[::]:6783", "udp", "[::]:6783"},
		{"[fd00::1]:6783", "udp6", "[fd00::1]:6783"},
	} {
		var c Config
		if tc.in != "" {
			c.Addr = netip.MustParseAddrPort(tc.in)
		}
		n, a := c.network()
		if n != tc.network || a.String() != tc.addr {
			t.Errorf("%q: %s %s, want %s %s", tc.in, n, a, tc.network, tc.addr)
		}
	}
}
