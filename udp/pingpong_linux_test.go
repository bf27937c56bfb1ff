package udp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
)

// BenchmarkPingPong bounces one datagram between two Binds over loopback: the round trip
// of two reader wake-ups. On 2 CPUs the two readers compete for the cores, which is the
// point of measuring it.
func BenchmarkPingPong(b *testing.B) {
	inNS := benchNS(b)
	cfg := Config{Addr: netip.MustParseAddrPort("127.0.0.1:0")}
	var x, y Bind
	var err error
	inNS(func() {
		if x, err = Listen(cfg); err == nil {
			y, err = Listen(cfg)
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer x.Close()
	defer y.Close()
	echoed := make(chan error, 1)
	go func() {
		bufs, sizes, eps := [][]byte{make([]byte, 2048)}, []int{0}, []netip.AddrPort{{}}
		for {
			n, err := y.ReadBatch(bufs, sizes, eps)
			if err != nil {
				echoed <- err
				return
			}
			if err := y.WriteBatch([][]byte{bufs[0][:sizes[0]]}, eps[0]); err != nil || n != 1 {
				echoed <- errors.Join(err, fmt.Errorf("echo read %d", n))
				return
			}
		}
	}()
	ping := [][]byte{make([]byte, 100)}
	bufs, sizes, eps := [][]byte{make([]byte, 2048)}, []int{0}, []netip.AddrPort{{}}
	b.ResetTimer()
	for range b.N {
		if err := x.WriteBatch(ping, y.LocalAddr()); err != nil {
			b.Fatal(err)
		}
		if _, err := x.ReadBatch(bufs, sizes, eps); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	_ = y.Close()
	if err := <-echoed; !errors.Is(err, net.ErrClosed) {
		b.Fatalf("echo: %v", err)
	}
}
