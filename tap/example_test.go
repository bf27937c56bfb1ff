package tap_test

import (
	"errors"
	"log"
	"net"

	"github.com/weavemesh/weave/tap"
)

// A reader loop over every queue of an offloading TAP, as the router runs it.
func Example() {
	dev, err := tap.Open(tap.Config{Name: "vethwe-tap", MTU: 1376, Offload: true, Queues: 2})
	if err != nil {
		log.Fatal(err)
	}
	defer dev.Close()
	queues := []tap.Device{dev}
	if mq, ok := dev.(tap.MultiQueue); ok {
		queues = mq.Queues()
	}
	for _, q := range queues {
		go func() {
			bufs := make([][]byte, q.BatchSize())
			for i := range bufs {
				// Headroom in front; room for a coalesced super-frame behind, for Write.
				bufs[i] = make([]byte, tap.Headroom+q.MTU()+18, tap.Headroom+tap.MaxFrameSize)
			}
			sizes := make([]int, len(bufs))
			for {
				n, err := q.Read(bufs, sizes, tap.Headroom)
				if errors.Is(err, net.ErrClosed) {
					return
				}
				for i := 0; i < n; i++ {
					_ = bufs[i][tap.Headroom : tap.Headroom+sizes[i]] // one Ethernet frame, at most MTU+18
				}
			}
		}()
	}
}
