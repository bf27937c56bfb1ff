package fastdp

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/testutil"
	"github.com/weavemesh/weave/mesh"
)

// The mesh router is what carries our acknowledgements.
var _ Control = (*mesh.Router)(nil)

// fastTiming keeps the unit tests to fractions of a second.
var fastTiming = Timing{Interval: 10 * time.Millisecond, DownAfter: 100 * time.Millisecond,
	RecoverAfter: 150 * time.Millisecond, MaxHoldoff: time.Second, StableAfter: 10 * time.Second}

// fakeMesh delivers overlay control messages between FastDPs, like the mesh connection
// would, and can cut them.
type fakeMesh struct {
	mu    sync.Mutex
	nodes map[mesh.PeerName]*FastDP
}

type meshEnd struct {
	m    *fakeMesh
	self mesh.PeerName
}

func (e meshEnd) SendOverlayControl(peer mesh.PeerName, connID uint64, msg []byte) error {
	e.m.mu.Lock()
	dst := e.m.nodes[peer]
	e.m.mu.Unlock()
	if dst == nil {
		return fmt.Errorf("no connection to %s", peer)
	}
	dst.OverlayControl(e.self, connID, append([]byte(nil), msg...))
	return nil
}

type node struct {
	name    mesh.PeerName
	addr    netip.Addr
	f       *FastDP
	k       *FakeKernel
	mu      sync.Mutex
	changes []PeerStatus
}

func (n *node) seen() []PeerStatus {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]PeerStatus(nil), n.changes...)
}

func newNode(t *testing.T, fn *FakeNet, m *fakeMesh, i int, mtu int) *node {
	t.Helper()
	n := &node{name: mesh.PeerName(0x0200000000 + uint64(i)), addr: netip.AddrFrom4([4]byte{10, 201, 0, byte(i)})}
	n.k = fn.Kernel(n.addr, mtu)
	f, err := New(Config{Name: n.name, Kernel: n.k, Timing: fastTiming, VNI: 42,
		OnChange: func(s PeerStatus) {
			n.mu.Lock()
			n.changes = append(n.changes, s)
			n.mu.Unlock()
		}})
	if err != nil {
		t.Fatal(err)
	}
	n.f = f
	m.mu.Lock()
	m.nodes[n.name] = f
	m.mu.Unlock()
	t.Cleanup(func() { f.Close() })
	return n
}

// connect tells both ends about their connection, as the mesh hook would.
func connect(t *testing.T, a, b *node, connID uint64, mutate func(*Peer)) {
	t.Helper()
	for _, pair := range [][2]*node{{a, b}, {b, a}} {
		self, other := pair[0], pair[1]
		p := Peer{Name: other.name, ConnID: connID, Addr: other.addr, LocalAddr: self.addr,
			Feature: self.f.Features()[FeatureKey]}
		if mutate != nil {
			mutate(&p)
		}
		if err := self.f.AddPeer(p); err != nil {
			t.Fatal(err)
		}
	}
}

func pair(t *testing.T) (*FakeNet, *node, *node) {
	fn := NewFakeNet()
	m := &fakeMesh{nodes: map[mesh.PeerName]*FastDP{}}
	a, b := newNode(t, fn, m, 1, 1450), newNode(t, fn, m, 2, 1450)
	connect(t, a, b, 77, nil)
	a.f.Start(meshEnd{m, a.name})
	b.f.Start(meshEnd{m, b.name})
	return fn, a, b
}

func waitState(t *testing.T, n *node, peer *node, state State, reason Reason, active bool) {
	t.Helper()
	testutil.Eventually(t, 3*time.Second, fmt.Sprintf("%s sees %s %s/%s", n.name, peer.name, state, reason), func() error {
		s, ok := n.f.Status(peer.name)
		if !ok {
			return fmt.Errorf("no status")
		}
		if s.State != state || s.Reason != reason || s.Active != active {
			return fmt.Errorf("state %s reason %q active %v (%s)", s.State, s.Reason, s.Active, s.Detail)
		}
		return nil
	})
}

func TestPairGoesHealthyAndProgramsTheKernel(t *testing.T) {
	_, a, b := pair(t)
	mac := net.HardwareAddr{0x02, 0xaa, 0, 0, 0, 2}
	a.f.Learn(mac, b.name) // learned before the pair is on fastdp: a drop entry for now
	if dst, ok := a.k.MAC([6]byte(mac)); !ok || dst.IsValid() {
		t.Fatalf("MAC entry %v (%v) while the pair is still probing, want a drop entry", dst, ok)
	}
	waitState(t, a, b, StateHealthy, ReasonNone, true)
	waitState(t, b, a, StateHealthy, ReasonNone, true)
	if !a.k.Flooding(b.addr) || !b.k.Flooding(a.addr) {
		t.Fatal("healthy pair without flood entries")
	}
	if got, ok := a.k.MAC([6]byte(mac)); !ok || got != b.addr {
		t.Fatalf("learned MAC points at %v (%v), want %v", got, ok, b.addr)
	}
	if a.f.MaxFrame(b.name) != 1450+14 || !a.f.Active(b.name) {
		t.Fatalf("MaxFrame %d Active %v", a.f.MaxFrame(b.name), a.f.Active(b.name))
	}
	// A MAC moving to another peer loses its old entry; Forget removes it.
	a.f.Learn(mac, mesh.PeerName(99))
	if dst, ok := a.k.MAC([6]byte(mac)); !ok || dst.IsValid() {
		t.Fatalf("MAC entry %v (%v) after the MAC moved to a peer not on fastdp, want a drop entry", dst, ok)
	}
	a.f.Learn(mac, b.name)
	a.f.Forget(mac)
	if _, ok := a.k.MAC([6]byte(mac)); ok {
		t.Fatal("MAC entry kept after Forget")
	}
	// The switch heard probing, then healthy+active; every change once, in order.
	ch := a.seen()
	if len(ch) != 2 || ch[0].State != StateProbing || ch[0].Active || ch[1].State != StateHealthy || !ch[1].Active {
		t.Fatalf("OnChange calls %+v, want probing then healthy+active", ch)
	}
	st := a.f.Stats()
	if st.BeatsSent == 0 || st.BeatsReceived == 0 || st.AcksReceived == 0 || st.BadFrames != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestBlockedPathFallsBackAndReturns(t *testing.T) {
	fn, a, b := pair(t)
	waitState(t, a, b, StateHealthy, ReasonNone, true)
	a.f.Learn(net.HardwareAddr{2, 0xbb, 0, 0, 0, 1}, b.name)
	if dst, ok := a.k.MAC([6]byte{2, 0xbb, 0, 0, 0, 1}); !ok || dst != b.addr {
		t.Fatalf("MAC of a healthy peer points at %v (%v), want %v", dst, ok, b.addr)
	}
	fn.Block(a.addr, b.addr, true)
	fn.Block(b.addr, a.addr, true)
	waitState(t, a, b, StateUnhealthy, ReasonUDPBlocked, false)
	waitState(t, b, a, StateUnhealthy, ReasonUDPBlocked, false)
	if a.k.Flooding(b.addr) {
		t.Fatal("flood entry kept for an unhealthy peer")
	}
	if dst, ok := a.k.MAC([6]byte{2, 0xbb, 0, 0, 0, 1}); !ok || dst.IsValid() {
		t.Fatalf("MAC of an unhealthy peer points at %v (%v), want a drop entry", dst, ok)
	}
	down := time.Now()
	fn.Block(a.addr, b.addr, false)
	fn.Block(b.addr, a.addr, false)
	waitState(t, a, b, StateHealthy, ReasonNone, true)
	// It came back only after the (doubled) hold-off of good heartbeats.
	if d := time.Since(down); d < 2*fastTiming.RecoverAfter {
		t.Fatalf("back on fastdp after %v, before the hold-off %v", d, 2*fastTiming.RecoverAfter)
	}
	// The switch was told inactive before the kernel entries went, and active after they came.
	var states []string
	for _, s := range a.seen() {
		states = append(states, fmt.Sprintf("%s/%s/%v", s.State, s.Reason, s.Active))
	}
	want := []string{"probing/probing/false", "healthy//true", "unhealthy/udp-blocked/false",
		"unhealthy/recovering/false", "healthy//true"}
	// The first report may come after the small heartbeats passed and before the full-size
	// ones did (a loaded machine): probing with reason mtu is the same state.
	if len(states) > 0 && states[0] == "probing/mtu/false" {
		states[0] = want[0]
	}
	if fmt.Sprint(states) != fmt.Sprint(want) {
		t.Fatalf("OnChange %v, want %v", states, want)
	}
}

func TestOneWayAndMTU(t *testing.T) {
	fn, a, b := pair(t)
	waitState(t, a, b, StateHealthy, ReasonNone, true)
	fn.SetPathMTU(a.addr, b.addr, 1000)
	waitState(t, a, b, StateUnhealthy, ReasonMTU, false)
	fn.SetPathMTU(a.addr, b.addr, 0)
	fn.Block(b.addr, a.addr, true)
	waitState(t, a, b, StateUnhealthy, ReasonUDPBlocked, false)
	s, _ := a.f.Status(b.name)
	if want := "heartbeats pass to the peer but not back: UDP 6784 blocked one way?"; s.Detail != want {
		t.Fatalf("detail %q, want %q", s.Detail, want)
	}
}

func TestNATDetected(t *testing.T) {
	fn := NewFakeNet()
	m := &fakeMesh{nodes: map[mesh.PeerName]*FastDP{}}
	a, b := newNode(t, fn, m, 1, 1450), newNode(t, fn, m, 2, 1450)
	// b is behind a NAT: a reaches it at 10.201.0.200 (nothing there), b sees itself as 10.201.0.2.
	natAddr := netip.MustParseAddr("10.201.0.200")
	if err := a.f.AddPeer(Peer{Name: b.name, ConnID: 5, Addr: natAddr, LocalAddr: a.addr, Feature: a.f.feature}); err != nil {
		t.Fatal(err)
	}
	if err := b.f.AddPeer(Peer{Name: a.name, ConnID: 5, Addr: a.addr, LocalAddr: b.addr, Feature: b.f.feature}); err != nil {
		t.Fatal(err)
	}
	a.f.Start(meshEnd{m, a.name})
	b.f.Start(meshEnd{m, b.name})
	waitState(t, b, a, StateUnhealthy, ReasonNAT, false)
	waitState(t, a, b, StateUnhealthy, ReasonUDPBlocked, false)
}

func TestPairsThatStayOnSleeve(t *testing.T) {
	fn := NewFakeNet()
	m := &fakeMesh{nodes: map[mesh.PeerName]*FastDP{}}
	a := newNode(t, fn, m, 1, 1450)
	others := []struct {
		p      Peer
		reason Reason
	}{
		{Peer{Name: 11, Addr: netip.MustParseAddr("10.201.0.11"), NeedsEncryption: true, Feature: a.f.feature}, ReasonEncryption},
		{Peer{Name: 12, Addr: netip.MustParseAddr("10.201.0.12")}, ReasonPeerNoFastdp},
		{Peer{Name: 13, Addr: netip.MustParseAddr("10.201.0.13"), Feature: "vxlan/6784/43"}, ReasonMismatch},
	}
	for _, o := range others {
		if err := a.f.AddPeer(o.p); err != nil {
			t.Fatal(err)
		}
	}
	a.f.Start(meshEnd{m, a.name})
	testutil.Eventually(t, time.Second, "three reports", func() error {
		if n := len(a.seen()); n != 3 {
			return fmt.Errorf("%d OnChange calls", n)
		}
		return nil
	})
	for _, o := range others {
		s, ok := a.f.Status(o.p.Name)
		if !ok || s.State != StateOff || s.Reason != o.reason || s.Active {
			t.Errorf("peer %s: %+v, want off/%s", o.p.Name, s, o.reason)
		}
	}
	if a.f.Stats().BeatsSent != 0 {
		t.Fatal("heartbeats sent although no peer can use fastdp")
	}
	if err := a.f.AddPeer(Peer{Name: 14}); err == nil {
		t.Fatal("AddPeer without an address succeeded")
	}
}

func TestConnectionHookAndStaleConnections(t *testing.T) {
	_, a, b := pair(t)
	waitState(t, a, b, StateHealthy, ReasonNone, true)
	// A stale ConnectionDown (an older connection) changes nothing.
	a.f.ConnectionDown(b.name, 76)
	if !a.f.Active(b.name) {
		t.Fatal("stale ConnectionDown removed the live connection")
	}
	// Acks for another connection are ignored and counted.
	before := a.f.Stats().Unknown
	a.f.OverlayControl(b.name, 76, appendAck(nil, ack{seq: a.f.seq, full: true}))
	a.f.OverlayControl(b.name, 77, []byte("WVFD garbage"))
	if st := a.f.Stats(); st.Unknown != before+1 || st.BadControl != 1 {
		t.Fatalf("stats %+v, want one more unknown and one bad control", st)
	}
	// Hostile frames on the heartbeat socket are refused and counted, never a panic.
	a.k.Inject([]byte{1, 2, 3})
	a.k.Inject(appendBeat(nil, testSrc, beat{sender: 0xdead, seq: 1}, 0))
	testutil.Eventually(t, time.Second, "refused frames counted", func() error {
		if st := a.f.Stats(); st.BadFrames != 1 || st.Unknown < before+2 {
			return fmt.Errorf("stats %+v", st)
		}
		return nil
	})
	a.f.ConnectionDown(b.name, 77)
	if _, ok := a.f.Status(b.name); ok || a.k.Flooding(b.addr) {
		t.Fatal("peer or flood entry left after ConnectionDown")
	}
	// A new connection, announced through the mesh hook on both ends.
	b.f.ConnectionDown(a.name, 77)
	for _, e := range [][2]*node{{a, b}, {b, a}} {
		e[0].f.ConnectionUp(mesh.ConnInfo{Peer: e[1].name, ConnID: 78,
			RemoteAddr: &net.TCPAddr{IP: e[1].addr.AsSlice(), Port: 40000},
			LocalAddr:  &net.TCPAddr{IP: e[0].addr.AsSlice(), Port: 6783},
			Features:   map[string]string{FeatureKey: a.f.feature}})
	}
	waitState(t, a, b, StateHealthy, ReasonNone, true)
	if s, _ := a.f.Status(b.name); s.ConnID != 78 || s.Addr != "10.201.0.2" {
		t.Fatalf("status %+v, want conn 78 at 10.201.0.2", s)
	}
}

func TestCloseStopsEverything(t *testing.T) {
	before := runtime.NumGoroutine()
	fn := NewFakeNet()
	m := &fakeMesh{nodes: map[mesh.PeerName]*FastDP{}}
	a := newNode(t, fn, m, 1, 1450)
	a.f.Start(meshEnd{m, a.name})
	a.f.Start(meshEnd{m, a.name})
	if err := a.f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.f.AddPeer(Peer{Name: 3, Addr: netip.MustParseAddr("10.0.0.3")}); err == nil {
		t.Fatal("AddPeer after Close succeeded")
	}
	testutil.Eventually(t, time.Second, "goroutines gone", func() error {
		if n := runtime.NumGoroutine(); n > before {
			return fmt.Errorf("%d goroutines, %d before", n, before)
		}
		return nil
	})
}

func TestVNIAndMTU(t *testing.T) {
	if VNIFor("a") == VNIFor("b") {
		t.Fatal("two mesh ids share a VNI")
	}
	for _, id := range []string{"", "a", "10.32.0.0/12", "prod"} {
		if v := VNIFor(id); v == 0 || v >= 1<<24-1 || v != VNIFor(id) {
			t.Fatalf("VNIFor(%q) = %d", id, v)
		}
	}
	if MTUFor(1500, false) != 1450 || MTUFor(1500, true) != 1430 || MTUFor(9001, false) != 8951 {
		t.Fatal("MTUFor")
	}
	if _, err := New(Config{Kernel: NewFakeNet().Kernel(netip.MustParseAddr("10.0.0.1"), 1450), VNI: 1 << 24}); err == nil {
		t.Fatal("VNI of 25 bits accepted")
	}
	if _, err := New(Config{Kernel: NewFakeNet().Kernel(netip.MustParseAddr("10.0.0.1"), 1450), Port: 70000}); err == nil {
		t.Fatal("port 70000 accepted")
	}
}

func testLogger(t *testing.T) *slog.Logger { return slog.New(slog.NewTextHandler(t.Output(), nil)) }

func TestLearnIsBounded(t *testing.T) {
	fn := NewFakeNet()
	k := fn.Kernel(netip.MustParseAddr("10.0.0.1"), 1450)
	f, err := New(Config{Kernel: k, MaxMACs: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i := 0; i < 10; i++ {
		f.Learn(net.HardwareAddr{2, 0, 0, 0, 0, byte(i)}, 7)
	}
	f.Learn(net.HardwareAddr{2, 0, 0, 0, 0, 1}, 8) // a known MAC may still move
	f.Learn(net.HardwareAddr{1, 2, 3}, 7)          // not a MAC: ignored
	if st := f.Stats(); st.MACsRefused != 7 {
		t.Fatalf("refused %d MACs, want 7", st.MACsRefused)
	}
	if _, ok := k.MAC([6]byte{2, 0, 0, 0, 0, 3}); ok {
		t.Fatal("a MAC past the bound reached the kernel")
	}
	if _, ok := k.MAC([6]byte{2, 0, 0, 0, 0, 1}); !ok {
		t.Fatal("a MAC within the bound is missing")
	}
}
