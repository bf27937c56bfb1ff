package tap

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/testutil"

	"github.com/weavemesh/weave/tap/frame"
)

// forwardGSO is forward with GSO passthrough: super-frames read whole and written whole.
func forwardGSO(t testing.TB, from Device, to GSOWriter, maxFrame *int, mu *sync.Mutex) {
	r := from.(GSOReader)
	bufs := make([][]byte, 16)
	wbufs := make([][]byte, len(bufs))
	sizes := make([]int, len(bufs))
	gso := make([]frame.VirtioNetHdr, len(bufs))
	for i := range bufs {
		bufs[i] = make([]byte, Headroom+MaxFrameSize)
	}
	for {
		n, err := r.ReadGSO(bufs, sizes, gso, Headroom)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("read: %v", err)
			}
			return
		}
		mu.Lock()
		for i := range n {
			*maxFrame = max(*maxFrame, sizes[i])
			wbufs[i] = bufs[i][:Headroom+sizes[i]]
		}
		mu.Unlock()
		if _, err := to.WriteGSO(wbufs[:n], gso[:n], Headroom); err != nil && errors.Is(err, net.ErrClosed) {
			return
		}
	}
}

// testGSOPassthrough carries TCP (v4 and v6) between two namespaces through two TAPs with
// ReadGSO/WriteGSO: with offloads at both ends super-frames cross whole; with a plain
// server-side TAP, WriteGSO cuts them into segments itself.
func testGSOPassthrough(t *testing.T, offS bool) {
	tp := buildTopoMixed(t, true, offS, 1)
	var mu sync.Mutex
	var maxC, maxS int
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); forwardGSO(t, tp.tc, tp.ts.(GSOWriter), &maxC, &mu) }()
	go func() { defer wg.Done(); forwardGSO(t, tp.ts, tp.tc.(GSOWriter), &maxS, &mu) }()
	defer func() {
		_ = tp.tc.Close()
		_ = tp.ts.Close()
		wg.Wait()
	}()
	for _, c := range []struct{ network, addr string }{{"tcp4", "10.99.0.2:0"}, {"tcp6", "[fd99::2]:0"}} {
		d := transfer(t, tp, c.network, c.addr, 16<<20)
		t.Logf("gso passthrough, server offload=%v, %s: 16 MiB in %v", offS, c.network, d)
	}
	sc, ss := settledStats(t, tp.tc, tp.ts)
	t.Logf("client-side tap %+v", sc)
	t.Logf("server-side tap %+v", ss)
	mu.Lock()
	defer mu.Unlock()
	if sc.RxSuperFrames == 0 || maxC <= 1514 {
		t.Fatalf("no super-frame was read whole (largest frame %d): %+v", maxC, sc)
	}
	if sc.RxDropped != 0 || ss.TxDropped != 0 {
		t.Fatalf("frames dropped: %+v %+v", sc, ss)
	}
	if offS {
		// One frame written per frame read: nothing was cut. Plain frames of a batch may
		// share a write (TxCoalesced), which is not cutting.
		if ss.TxFrames != sc.RxFrames {
			t.Fatalf("super-frames were not written whole: %d frames written for %d read: %+v", ss.TxFrames, sc.RxFrames, ss)
		}
	} else if ss.TxFrames <= sc.RxFrames {
		t.Fatalf("the plain TAP wrote %d frames for %d read: super-frames were not cut", ss.TxFrames, sc.RxFrames)
	}
}

func TestGSOPassthroughOffload(t *testing.T) { testGSOPassthrough(t, true) }
func TestGSOPassthroughToPlain(t *testing.T) { testGSOPassthrough(t, false) }

// settledStats waits until the forwarders have passed on every frame they read and each
// frame passed to Write is accounted for (written, coalesced into another write, or
// dropped). When transfer returns the connections' last ACKs and FINs are still in
// flight: a snapshot between one side's Rx and the other's Tx counts, or between a write's
// TxFrames and TxWrites (a window the race detector widens), looked like a frame not
// written whole.
func settledStats(t *testing.T, c, s Device) (sc, ss Stats) {
	t.Helper()
	accounted := func(st Stats) bool { return st.TxWrites+st.TxCoalesced+st.TxDropped == st.TxFrames }
	testutil.Eventually(t, 5*time.Second, "tap counters settle", func() error {
		sc, ss = sumStats(c), sumStats(s)
		if !accounted(sc) || !accounted(ss) || ss.TxFrames < sc.RxFrames || sc.TxFrames < ss.RxFrames {
			return fmt.Errorf("client %+v server %+v", sc, ss)
		}
		return nil
	})
	return sc, ss
}
