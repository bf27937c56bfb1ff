package udp_test

import (
	"errors"
	"log"
	"net"
	"net/netip"

	"github.com/weavemesh/weave/udp"
)

// A receive loop and a batched send, as the sleeve runs them.
func Example() {
	bind, err := udp.Listen(udp.Config{Addr: netip.MustParseAddrPort("0.0.0.0:6783")})
	if err != nil {
		log.Fatal(err)
	}
	defer bind.Close()
	if o, ok := bind.(udp.Offloads); ok {
		log.Printf("gso %v gro %v", o.GSOActive(), o.GROActive())
	}
	go func() {
		bufs := make([][]byte, bind.BatchSize())
		for i := range bufs {
			bufs[i] = make([]byte, 65535)
		}
		sizes := make([]int, len(bufs))
		eps := make([]netip.AddrPort, len(bufs))
		for {
			n, err := bind.ReadBatch(bufs, sizes, eps)
			if errors.Is(err, net.ErrClosed) {
				return
			}
			for i := 0; i < n; i++ {
				_ = bufs[i][:sizes[i]] // datagram from eps[i]
			}
		}
	}()
	// Equal-sized datagrams to one peer leave in one GSO send.
	batch := [][]byte{make([]byte, 1400), make([]byte, 1400), make([]byte, 600)}
	if err := bind.WriteBatch(batch, netip.MustParseAddrPort("192.0.2.7:6783")); err != nil {
		log.Print(err)
	}
}
