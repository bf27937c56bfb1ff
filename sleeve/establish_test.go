package sleeve_test

import (
	"fmt"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/testutil"
	"github.com/weavemesh/weave/mesh"
	"github.com/weavemesh/weave/overlay"
	"github.com/weavemesh/weave/sleeve"
	"github.com/weavemesh/weave/udp/udptest"
)

// TestEstablishedOnlyWhenUDPWorksBothWays: with UDP blocked in one direction the mesh
// connection stays up but never carries data; unblocked, it becomes established.
func TestEstablishedOnlyWhenUDPWorksBothWays(t *testing.T) {
	mem := mesh.NewMemNetwork()
	under := udptest.NewNetwork(1)
	under.Block(addrPort(1), addrPort(0))
	l := &lab{t: t, mem: mem, under: under}
	o := labOpts{n: 2, links: [][2]int{{1, 0}}, password: "pw"}
	l.nodes = []*node{l.addNode(0, o), l.addNode(1, o)}
	l.dumpOnFailure()
	a, b := l.nodes[0], l.nodes[1]
	testutil.Eventually(t, 5*time.Second, "b hears a's heartbeats", func() error {
		if info, ok := b.s.PeerInfo(a.m.Name()); !ok || info.Endpoint != addrPort(0) {
			return fmt.Errorf("b: %+v %v", info, ok)
		}
		return nil
	})
	// Give heartbeats many rounds: neither side may call the connection established.
	deadline := time.Now().Add(500 * time.Millisecond)
	for time.Now().Before(deadline) {
		for _, n := range l.nodes {
			if info, _ := n.s.PeerInfo(l.nodes[1-n.i].m.Name()); info.Established {
				t.Fatalf("node %d established with UDP blocked one way", n.i)
			}
			if _, ok := n.m.UnicastNextHop(l.nodes[1-n.i].m.Name()); ok {
				t.Fatalf("node %d has a route over a one-way UDP path", n.i)
			}
		}
		time.Sleep(20 * time.Millisecond) // sampling a condition that must stay false
	}
	under.Unblock(addrPort(1), addrPort(0))
	l.waitRoutes()
}

// TestCloseStopsGoroutines: building and closing whole data planes leaves no goroutine.
func TestCloseStopsGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	l := newLab(t, labOpts{n: 3, links: [][2]int{{1, 0}, {2, 1}}, password: "pw"})
	l.waitRoutes()
	for _, n := range l.nodes {
		n.r.Close()
		n.s.Close()
		n.s.Close() // idempotent
		n.m.Close()
	}
	testutil.Eventually(t, 5*time.Second, "goroutines gone", func() error {
		if now := runtime.NumGoroutine(); now > before+2 {
			buf := make([]byte, 1<<16)
			return fmt.Errorf("%d goroutines, %d before:\n%s", now, before, buf[:runtime.Stack(buf, true)])
		}
		return nil
	})
}

type counter struct{ frames atomic.Int64 }

func (c *counter) Receive(_ mesh.PeerName, frames []overlay.Frame) { c.frames.Add(int64(len(frames))) }

// TestSleeveForwardingAllocatesNothing: once warm, frames go from Forward through sealing,
// the (in-memory) socket and opening to the receiver without allocating.
func TestSleeveForwardingAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	for _, tc := range []struct {
		name     string
		password string
		ciphers  [][]string
	}{
		{"plaintext", "", nil},
		{"aes-gcm", "pw", nil},
		{"secretbox", "pw", [][]string{{sleeve.CipherSecretbox}, {sleeve.CipherSecretbox}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testForwardingAllocs(t, labOpts{n: 2, links: [][2]int{{1, 0}}, password: tc.password, ciphers: tc.ciphers})
		})
	}
}

func testForwardingAllocs(t *testing.T, o labOpts) {
	l := newLab(t, o)
	l.waitRoutes()
	a, b := l.nodes[0], l.nodes[1]
	c := &counter{}
	// Count what b's sleeve delivers instead of handing it to b's router.
	sink := sleeve.HookReceiverForTest(b.s, c)
	defer sink()
	frames := make([]overlay.Frame, 64)
	for i := range frames {
		f := ethFrame(mac(1, 1), mac(0, 1), "alloc", 1400)
		frames[i] = overlay.Frame{Src: a.m.Name(), Dst: b.m.Name(), Data: f}
		if i%2 == 0 { // half of them lend their buffer (sent from it), half are copied
			buf := make([]byte, 128+len(f))
			copy(buf[128:], f)
			frames[i] = overlay.Frame{Src: a.m.Name(), Dst: b.m.Name(), Data: buf[128:], Buf: buf, Off: 128}
		}
	}
	var want int64
	run := func() {
		a.s.Forward(b.m.Name(), frames)
		want += int64(len(frames))
		for c.frames.Load() < want {
			runtime.Gosched()
		}
	}
	for range 20 {
		run() // warm the pools
	}
	allocs := testing.AllocsPerRun(50, run)
	t.Logf("%.2f allocations per batch of %d frames (whole process)", allocs, len(frames))
	if perFrame := allocs / float64(len(frames)); perFrame > 0.05 {
		t.Fatalf("%.3f allocations per forwarded frame, want none", perFrame)
	}
}

// TestReroutesWhenUDPPathDies: in a triangle, when UDP between 0 and 2 stops working (the
// mesh's TCP connection stays up), the sleeve withdraws the connection from the routes and
// frames between 0 and 2 are relayed through 1; when it works again, the direct path returns.
func TestReroutesWhenUDPPathDies(t *testing.T) {
	l := newLab(t, labOpts{n: 3, links: [][2]int{{1, 0}, {2, 1}, {2, 0}}, password: "pw", timeout: 300 * time.Millisecond})
	l.waitSettled(map[mesh.PeerName]int{peerName(0): 2, peerName(1): 2, peerName(2): 2})
	n0, n1, n2 := l.nodes[0], l.nodes[1], l.nodes[2]
	testutil.Eventually(t, 5*time.Second, "direct route 0 -> 2", func() error {
		if hop, _ := n0.r.NextHop(n2.m.Name()); hop != n2.m.Name() {
			return fmt.Errorf("0 -> 2 goes via %v", hop)
		}
		return nil
	})
	l.under.Block(addrPort(0), addrPort(2))
	l.under.Block(addrPort(2), addrPort(0))
	testutil.Eventually(t, 10*time.Second, "0 routes to 2 via 1", func() error {
		if hop, ok := n0.r.NextHop(n2.m.Name()); !ok || hop != n1.m.Name() {
			return fmt.Errorf("next hop %v %v", hop, ok)
		}
		if hop, ok := n2.r.NextHop(n0.m.Name()); !ok || hop != n1.m.Name() {
			return fmt.Errorf("2's next hop to 0: %v %v", hop, ok)
		}
		if hops := n1.r.BroadcastHops(n0.m.Name()); !slices.Contains(hops, n2.m.Name()) {
			return fmt.Errorf("1 passes 0's broadcasts to %v", hops)
		}
		return nil
	})
	n0.tap.Inject(ethFrame(bcast, mac(0, 1), "after-cut", 60))
	expectFrame(t, n2, "after-cut", 5*time.Second)
	n2.tap.Inject(ethFrame(mac(0, 1), mac(2, 1), "reply-after-cut", 60))
	expectFrame(t, n0, "reply-after-cut", 5*time.Second)
	if n1.r.Stats().Relayed == 0 {
		t.Error("nothing was relayed through 1")
	}
	l.under.Unblock(addrPort(0), addrPort(2))
	l.under.Unblock(addrPort(2), addrPort(0))
	testutil.Eventually(t, 10*time.Second, "direct path back", func() error {
		if hop, ok := n0.r.NextHop(n2.m.Name()); !ok || hop != n2.m.Name() {
			return fmt.Errorf("next hop %v %v", hop, ok)
		}
		return nil
	})
}
