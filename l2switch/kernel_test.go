package l2switch

import (
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/weavemesh/weave/mesh"
	"github.com/weavemesh/weave/overlay"
	"github.com/weavemesh/weave/tap/frame"
	"github.com/weavemesh/weave/tap/taptest"
)

type fakeLearner struct {
	mu      sync.Mutex
	learned map[string]mesh.PeerName
	forgot  []string
}

func (l *fakeLearner) Learn(mac net.HardwareAddr, p mesh.PeerName) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.learned[mac.String()] = p
}

func (l *fakeLearner) Forget(mac net.HardwareAddr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.forgot = append(l.forgot, mac.String())
}

func (l *fakeLearner) snapshot() (map[string]mesh.PeerName, []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := map[string]mesh.PeerName{}
	for k, v := range l.learned {
		m[k] = v
	}
	return m, slices.Clone(l.forgot)
}

// With the kernel carrying our frames to B: unicast for B's MACs is left to the kernel,
// broadcasts reach B marked Delivered (B only passes them on), frames for C behind B still
// go over userspace, and B's Delivered frames are never injected a second time.
func TestKernelPathSplitsTraffic(t *testing.T) {
	dev := taptest.New(taptest.Config{MTU: 1500})
	fwd := &fakeForwarder{max: 1500}
	sw := overlay.NewSwitch(fwd)
	sw.SetKernel(peerB, 1514)
	learner := &fakeLearner{learned: map[string]mesh.PeerName{}}
	r, err := New(Config{Name: us, TAP: dev, Forwarder: sw, Learner: learner})
	if err != nil {
		t.Fatal(err)
	}
	r.Start(fakeRoutes{})
	t.Cleanup(func() { r.Close() })

	macC := frame.MAC{2, 0, 0, 0, 3, 1}
	r.Receive(peerB, []overlay.Frame{{Src: peerB, Dst: us, Data: eth(macLocal, macRemote, 80)}})
	<-dev.Written()
	r.Receive(peerB, []overlay.Frame{{Src: peerC, Dst: us, Data: eth(macLocal, macC, 81)}})
	<-dev.Written()
	learned, _ := learner.snapshot()
	if learned[net.HardwareAddr(macRemote[:]).String()] != peerB || learned[net.HardwareAddr(macC[:]).String()] != peerC {
		t.Fatalf("learner heard %v", learned)
	}
	if _, ok := learned[net.HardwareAddr(macLocal[:]).String()]; ok {
		t.Fatal("a local MAC was given to the learner")
	}

	// Unicast for B's MAC: the kernel has it; then a broadcast as a fence.
	dev.Inject(eth(macRemote, macLocal, 60))
	dev.Inject(eth(bcast(), macLocal, 61))
	got := waitSent(t, fwd, 1)
	if len(got) != 1 || len(got[0].Data) != 61 || !got[0].Delivered || got[0].Dst != peerB {
		t.Fatalf("sent %d frames, first %d bytes delivered=%v dst=%v; want only the broadcast, Delivered, to B",
			len(got), len(got[0].Data), got[0].Delivered, got[0].Dst)
	}
	if st := r.Stats(); st.KernelCarried != 1 || st.KernelRelayOnly != 1 {
		t.Fatalf("stats %+v", st)
	}
	// Unicast for C (behind B): only userspace reaches C.
	dev.Inject(eth(macC, macLocal, 62))
	got = waitSent(t, fwd, 1)
	if got[0].Dst != peerC || got[0].Delivered {
		t.Fatalf("frame for C sent to %v delivered=%v", got[0].Dst, got[0].Delivered)
	}

	// B's broadcast that its kernel already delivered is not injected; the next frame is.
	r.Receive(peerB, []overlay.Frame{{Src: peerB, Dst: us, Data: eth(bcast(), macRemote, 90), Delivered: true}})
	r.Receive(peerB, []overlay.Frame{{Src: peerB, Dst: us, Data: eth(bcast(), macRemote, 91)}})
	select {
	case f := <-dev.Written():
		if len(f) != 91 {
			t.Fatalf("injected a %d-byte frame, want only the 91-byte one", len(f))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("nothing injected")
	}

	// Back to userspace: unicast for B goes over the overlay again.
	sw.SetKernel(peerB, 0)
	dev.Inject(eth(macRemote, macLocal, 63))
	got = waitSent(t, fwd, 1)
	if got[0].Dst != peerB || got[0].Delivered || len(got[0].Data) != 63 {
		t.Fatalf("after the flip: %d bytes to %v delivered=%v", len(got[0].Data), got[0].Dst, got[0].Delivered)
	}

	r.PeerGone(peerB)
	if _, forgot := learner.snapshot(); !slices.Contains(forgot, net.HardwareAddr(macRemote[:]).String()) {
		t.Fatalf("learner not told that B's MAC is gone: %v", forgot)
	}
}
