package l2switch

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/testutil"
	"github.com/weavemesh/weave/mesh"
	"github.com/weavemesh/weave/overlay"
	"github.com/weavemesh/weave/tap/frame"
	"github.com/weavemesh/weave/tap/taptest"
)

const (
	us    mesh.PeerName = 1
	peerB mesh.PeerName = 2
	peerC mesh.PeerName = 3 // behind B
)

// fakeRoutes: we are connected to B, C is reached through B.
type fakeRoutes struct{}

func (fakeRoutes) UnicastNextHop(dst mesh.PeerName) (mesh.PeerName, bool) {
	switch dst {
	case peerB, peerC:
		return peerB, true
	}
	return 0, false
}

func (fakeRoutes) BroadcastNextHops(origin mesh.PeerName) []mesh.PeerName {
	if origin == us {
		return []mesh.PeerName{peerB}
	}
	return nil
}

func (fakeRoutes) Peers() []mesh.PeerName { return []mesh.PeerName{us, peerB, peerC} }

// fakeForwarder records copies of what it is asked to send.
type fakeForwarder struct {
	mu     sync.Mutex
	max    int
	sent   []overlay.Frame
	noCopy bool // for the allocation test
}

func (f *fakeForwarder) Forward(hop mesh.PeerName, frames []overlay.Frame) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.noCopy {
		return
	}
	for _, fr := range frames {
		f.sent = append(f.sent, overlay.Frame{Src: fr.Src, Dst: fr.Dst, Data: bytes.Clone(fr.Data), Delivered: fr.Delivered})
	}
}

func (f *fakeForwarder) MaxFrame(mesh.PeerName) int { return f.max }

func (f *fakeForwarder) take() []overlay.Frame {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.sent
	f.sent = nil
	return s
}

func newTestSwitch(t *testing.T, max int) (*Switch, *taptest.Device, *fakeForwarder) {
	dev := taptest.New(taptest.Config{MTU: 1500})
	fwd := &fakeForwarder{max: max}
	r, err := New(Config{Name: us, TAP: dev, Forwarder: fwd})
	if err != nil {
		t.Fatal(err)
	}
	r.Start(fakeRoutes{})
	t.Cleanup(func() { r.Close() })
	return r, dev, fwd
}

var (
	macLocal  = frame.MAC{2, 0, 0, 0, 1, 1}
	macRemote = frame.MAC{2, 0, 0, 0, 2, 1}
)

func eth(dst, src frame.MAC, size int) []byte {
	f := make([]byte, size)
	copy(f[0:6], dst[:])
	copy(f[6:12], src[:])
	binary.BigEndian.PutUint16(f[12:14], 0x88b5)
	return f
}

// ipv4Frame builds an IPv4/UDP frame of total size bytes.
func ipv4Frame(dst, src frame.MAC, size int, df bool) []byte {
	f := eth(dst, src, size)
	binary.BigEndian.PutUint16(f[12:14], frame.EtherTypeIPv4)
	ip := f[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], uint16(size-14))
	binary.BigEndian.PutUint16(ip[4:6], 0x4242)
	if df {
		binary.BigEndian.PutUint16(ip[6:8], frame.IPv4DontFragment)
	}
	ip[8], ip[9] = 64, frame.ProtoUDP
	copy(ip[12:16], []byte{10, 32, 0, 1})
	copy(ip[16:20], []byte{10, 32, 0, 2})
	binary.BigEndian.PutUint16(ip[10:12], ^frame.Checksum(ip[:20], 0))
	for i := 20; i < size-14; i++ {
		ip[i] = byte(i)
	}
	return f
}

func waitSent(t *testing.T, fwd *fakeForwarder, n int) []overlay.Frame {
	t.Helper()
	var got []overlay.Frame
	testutil.Eventually(t, 5*time.Second, fmt.Sprintf("%d frames forwarded", n), func() error {
		got = append(got, fwd.take()...)
		if len(got) < n {
			return fmt.Errorf("%d so far", len(got))
		}
		return nil
	})
	return got
}

func TestLearningUnicastAndMoves(t *testing.T) {
	r, dev, fwd := newTestSwitch(t, 1500)
	// Unknown destination: flooded along our tree, tagged for the hop.
	dev.Inject(eth(macRemote, macLocal, 60))
	got := waitSent(t, fwd, 1)
	if got[0].Src != us || got[0].Dst != peerB {
		t.Fatalf("flooded frame tagged %v->%v", got[0].Src, got[0].Dst)
	}
	if p, ok := r.Owner(macLocal[:]); !ok || p != us {
		t.Fatalf("local MAC learned as %v %v", p, ok)
	}
	// A frame from C (relayed by B) teaches where macRemote lives and is injected.
	r.Receive(peerB, []overlay.Frame{{Src: peerC, Dst: us, Data: eth(macLocal, macRemote, 80)}})
	select {
	case f := <-dev.Written():
		if len(f) != 80 {
			t.Fatalf("injected %d bytes", len(f))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("frame for a local MAC not injected")
	}
	if p, _ := r.Owner(macRemote[:]); p != peerC {
		t.Fatalf("remote MAC owner %v, want C", p)
	}
	// Now unicast goes to C via B, not flooded.
	dev.Inject(eth(macRemote, macLocal, 60))
	got = waitSent(t, fwd, 1)
	if got[0].Dst != peerC || got[0].Src != us {
		t.Fatalf("unicast tagged %v->%v, want us->C", got[0].Src, got[0].Dst)
	}
	// The MAC moves to B.
	r.Receive(peerB, []overlay.Frame{{Src: peerB, Dst: us, Data: eth(macLocal, macRemote, 80)}})
	<-dev.Written()
	if p, _ := r.Owner(macRemote[:]); p != peerB || r.Stats().MACMoves != 1 {
		t.Fatalf("after move: owner %v, moves %d", p, r.Stats().MACMoves)
	}
	// And to our own bridge: then frames for it stay local.
	dev.Inject(eth(bcast(), macRemote, 60))
	waitSent(t, fwd, 1)
	dev.Inject(eth(macRemote, macLocal, 60))
	dev.Inject(eth(bcast(), macLocal, 60)) // fence
	got = waitSent(t, fwd, 1)
	if len(got) != 1 || !frame.MAC(got[0].Data[0:6]).IsMulticast() {
		t.Fatalf("a frame between two local MACs left the host: %d frames", len(got))
	}
	// Peer GC forgets its MACs.
	r.Receive(peerB, []overlay.Frame{{Src: peerC, Dst: us, Data: eth(macLocal, frame.MAC{2, 0, 0, 0, 3, 3}, 80)}})
	<-dev.Written()
	r.PeerGone(peerC)
	if _, ok := r.Owner([]byte{2, 0, 0, 0, 3, 3}); ok {
		t.Fatal("MAC of a removed peer still known")
	}
}

func bcast() frame.MAC { return frame.Broadcast }

func TestRelayByDestinationPeer(t *testing.T) {
	r, dev, fwd := newTestSwitch(t, 1500)
	// A frame for C arriving from elsewhere is relayed to B unchanged, never injected.
	r.Receive(peerB, []overlay.Frame{{Src: 7, Dst: peerC, Data: eth(macRemote, macLocal, 70)}})
	got := waitSent(t, fwd, 1)
	if got[0].Src != 7 || got[0].Dst != peerC {
		t.Fatalf("relayed as %v->%v", got[0].Src, got[0].Dst)
	}
	select {
	case <-dev.Written():
		t.Fatal("relayed frame injected into our bridge")
	default:
	}
	if r.Stats().Relayed != 1 {
		t.Fatalf("stats %+v", r.Stats())
	}
	r.Receive(peerB, []overlay.Frame{{Src: 7, Dst: 99, Data: eth(macRemote, macLocal, 70)}})
	if r.Stats().NoRoute != 1 {
		t.Fatalf("frame to an unknown peer: stats %+v", r.Stats())
	}
}

func TestOversizeDFGetsICMP(t *testing.T) {
	r, dev, fwd := newTestSwitch(t, 1000)
	r.Receive(peerB, []overlay.Frame{{Src: peerC, Dst: us, Data: eth(macLocal, macRemote, 60)}})
	<-dev.Written()
	dev.Inject(ipv4Frame(macRemote, macLocal, 1400, true))
	var reply []byte
	select {
	case reply = <-dev.Written():
	case <-time.After(5 * time.Second):
		t.Fatal("no ICMP reply")
	}
	p, err := frame.Parse(reply)
	if err != nil {
		t.Fatal(err)
	}
	ip := reply[14:]
	icmp := ip[20:]
	if p.IP.Protocol != frame.ProtoICMP || icmp[0] != 3 || icmp[1] != 4 {
		t.Fatalf("reply is not frag-needed: proto %d type %d code %d", p.IP.Protocol, icmp[0], icmp[1])
	}
	if mtu := binary.BigEndian.Uint16(icmp[6:8]); mtu != 1000-14 {
		t.Errorf("ICMP says mtu %d, want %d", mtu, 1000-14)
	}
	if p.IP.Src.String() != "10.32.0.2" || p.IP.Dst.String() != "10.32.0.1" ||
		frame.MAC(reply[0:6]) != macLocal || frame.MAC(reply[6:12]) != macRemote {
		t.Errorf("reply addressed wrongly: %v -> %v", p.IP.Src, p.IP.Dst)
	}
	if frame.Checksum(ip[:20], 0) != 0xffff || frame.Checksum(icmp, 0) != 0xffff {
		t.Error("bad checksums")
	}
	if got := fwd.take(); len(got) != 0 {
		t.Errorf("oversize DF frame was forwarded anyway")
	}
}

func TestOversizeWithoutDFIsFragmented(t *testing.T) {
	r, dev, fwd := newTestSwitch(t, 600)
	r.Receive(peerB, []overlay.Frame{{Src: peerC, Dst: us, Data: eth(macLocal, macRemote, 60)}})
	<-dev.Written()
	orig := ipv4Frame(macRemote, macLocal, 1400, false)
	dev.Inject(orig)
	frags := waitSent(t, fwd, 3)
	var payload []byte
	for i, f := range frags {
		if len(f.Data) > 600 || f.Dst != peerC {
			t.Fatalf("fragment %d: %d bytes to %v", i, len(f.Data), f.Dst)
		}
		p, err := frame.Parse(f.Data)
		if err != nil {
			t.Fatal(err)
		}
		if off := int(p.IP.Fragment&frame.IPv4OffsetMask) * 8; off != len(payload) {
			t.Fatalf("fragment %d at offset %d, want %d", i, off, len(payload))
		}
		if mf := p.IP.Fragment&frame.IPv4MoreFragments != 0; mf != (i < len(frags)-1) {
			t.Fatalf("fragment %d MF=%v", i, mf)
		}
		if frame.Checksum(f.Data[14:34], 0) != 0xffff {
			t.Fatalf("fragment %d: bad header checksum", i)
		}
		payload = append(payload, f.Data[34:14+p.IP.TotalLen]...)
	}
	if !bytes.Equal(payload, orig[34:]) {
		t.Fatal("fragments do not reassemble to the original payload")
	}
	if r.Stats().Fragmented != 1 {
		t.Fatalf("stats %+v", r.Stats())
	}
}

// TestForwardingAllocatesNothing: a warm worker forwards a batch of captured frames and
// injects a batch of received ones without allocating.
func TestForwardingAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	dev := taptest.New(taptest.Config{MTU: 1500})
	fwd := &fakeForwarder{max: 1500, noCopy: true}
	r, err := New(Config{Name: us, TAP: dev, Forwarder: fwd})
	if err != nil {
		t.Fatal(err)
	}
	r.routes = fakeRoutes{}
	r.rebuild()
	defer r.Close()
	w := newWorker(r, 1500)
	const n = 64
	for i := range n {
		copy(w.readBufs[i][128:], eth(macRemote, macLocal, 1400))
		w.readSizes[i] = 1400
	}
	r.Receive(peerB, []overlay.Frame{{Src: peerC, Dst: us, Data: eth(macLocal, macRemote, 60)}})
	<-dev.Written()
	in := make([]overlay.Frame, n)
	for i := range in {
		in[i] = overlay.Frame{Src: peerC, Dst: us, Data: eth(macLocal, macRemote, 1400)}
	}
	drain := make(chan struct{})
	go func() {
		defer close(drain)
		for range 11 * n {
			<-dev.Written()
		}
	}()
	w.handleCaptured(n) // warm up
	r.Receive(peerB, in)
	allocs := testing.AllocsPerRun(10, func() {
		w.handleCaptured(n)
		r.Receive(peerB, in)
	})
	<-drain
	if allocs > 0 {
		t.Fatalf("%.1f allocations per batch of %d frames each way, want 0", allocs, n)
	}
}

// TestInjectInPlace: frames lent with their buffer are written to the bridge from it,
// intact, alongside frames that are copied.
func TestInjectInPlace(t *testing.T) {
	r, dev, _ := newTestSwitch(t, 1500)
	buf := make([]byte, 4096)
	f1 := eth(macLocal, macRemote, 300)
	f1[100] = 0x42
	copy(buf[20:], f1)
	f2 := eth(macLocal, macRemote, 200)
	r.Receive(peerB, []overlay.Frame{
		{Src: peerC, Dst: us, Data: f2},
		{Src: peerC, Dst: us, Data: buf[20:320], Buf: buf, Off: 20},
	})
	for _, want := range [][]byte{f2, f1} {
		select {
		case got := <-dev.Written():
			if !bytes.Equal(got, want) {
				t.Fatalf("injected %d bytes, want %d (or different content)", len(got), len(want))
			}
		case <-time.After(5 * time.Second):
			t.Fatal("frame not injected")
		}
	}
}
