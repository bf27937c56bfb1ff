package sleeve_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/testutil"
	"github.com/weavemesh/weave/l2switch"
	"github.com/weavemesh/weave/mesh"
	"github.com/weavemesh/weave/sleeve"
	"github.com/weavemesh/weave/tap/taptest"
	"github.com/weavemesh/weave/udp/udptest"
)

// node is one whole data plane without root: mesh over a MemNetwork, sleeve over an
// in-memory underlay, router on an in-memory TAP.
type node struct {
	i    int
	host string
	m    *mesh.Router
	s    *sleeve.Sleeve
	r    *l2switch.Switch
	tap  *taptest.Device
	bind *captureBind
}

// captureBind keeps a copy of the datagrams its node sends, for tests that replay or
// inspect them.
type captureBind struct {
	*udptest.Bind
	sent chan []byte
}

func (b *captureBind) WriteBatch(bufs [][]byte, ep netip.AddrPort) error {
	for _, d := range bufs {
		if b.sent == nil {
			break
		}
		select {
		case b.sent <- bytes.Clone(d):
		default:
		}
	}
	return b.Bind.WriteBatch(bufs, ep)
}

type lab struct {
	t     *testing.T
	mem   *mesh.MemNetwork
	under *udptest.Network
	nodes []*node
}

type labOpts struct {
	n        int
	links    [][2]int // i dials j
	password string
	ciphers  [][]string // per node; nil: default
	trusted  []netip.Prefix
	capture  bool
	timeout  time.Duration // sleeve heartbeat timeout; 0: default
	noGSO    []bool        // per node: sleeve.Config.DisableGSO
}

func testLogger() *slog.Logger {
	if os.Getenv("SLEEVE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func hostAddr(i int) string { return fmt.Sprintf("10.0.0.%d", i+1) }

func peerName(i int) mesh.PeerName { return mesh.PeerName(0x0a0000000000 + uint64(i+1)) }

// mac returns the MAC of "container" c on node i.
func mac(i, c int) [6]byte { return [6]byte{0x02, 0, 0, 0, byte(i + 1), byte(c)} }

func newLab(t *testing.T, o labOpts) *lab {
	l := &lab{t: t, mem: mesh.NewMemNetwork(), under: udptest.NewNetwork(1)}
	for i := range o.n {
		l.nodes = append(l.nodes, l.addNode(i, o))
	}
	l.dumpOnFailure()
	return l
}

func (l *lab) addNode(i int, o labOpts) *node {
	t := l.t
	host := hostAddr(i)
	ub, err := l.under.NewBind(netip.MustParseAddrPort(host + ":6783"))
	if err != nil {
		t.Fatal(err)
	}
	bind := &captureBind{Bind: ub}
	if o.capture {
		bind.sent = make(chan []byte, 4096)
	}
	var ciphers []string
	if o.ciphers != nil {
		ciphers = o.ciphers[i]
	}
	log := testLogger().With("node", i)
	noGSO := o.noGSO != nil && o.noGSO[i]
	s, err := sleeve.New(sleeve.Config{Name: peerName(i), Bind: bind, Ciphers: ciphers, Logger: log, DisableGSO: noGSO,
		FastHeartbeat: 20 * time.Millisecond, SlowHeartbeat: 50 * time.Millisecond,
		Timeout: o.timeout, ProbeTimeout: 30 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var peers []string
	for _, lk := range o.links {
		if lk[0] == i {
			peers = append(peers, hostAddr(lk[1])+":6783")
		}
	}
	cfg := mesh.Config{
		Name: peerName(i), NickName: fmt.Sprintf("n%d", i), ListenAddr: host + ":6783",
		Transport: l.mem.Transport(host), Logger: log, NoMemberlist: true, NoDiscovery: true,
		HeartbeatInterval: 2 * time.Second, GossipInterval: 500 * time.Millisecond,
		TopologyInterval: 200 * time.Millisecond, TopologyDelay: 20 * time.Millisecond,
		RouteDelay: 10 * time.Millisecond, Peers: peers, Password: []byte(o.password),
		TrustedSubnets: o.trusted,
		Overlay:        s, OverlayConfirms: true, Features: s.Features(),
	}
	m, err := mesh.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	dev := taptest.New(taptest.Config{Name: fmt.Sprintf("tap%d", i), MTU: 1438})
	r, err := l2switch.New(l2switch.Config{Name: peerName(i), TAP: dev, Forwarder: s, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	m.OnRoutesChanged(r.RoutesChanged)
	m.OnPeerGC(r.PeerGone)
	r.Start(m)
	s.Start(m, r)
	t.Cleanup(func() {
		r.Close()
		s.Close()
		m.Close()
	})
	return &node{i: i, host: host, m: m, s: s, r: r, tap: dev, bind: bind}
}

// waitRoutes waits until every node has a unicast route to every other node.
func (l *lab) waitRoutes() {
	l.t.Helper()
	testutil.Eventually(l.t, 10*time.Second, "routes between all nodes", func() error {
		for _, a := range l.nodes {
			for _, b := range l.nodes {
				if a == b {
					continue
				}
				if _, ok := a.r.NextHop(b.m.Name()); !ok {
					return fmt.Errorf("no route %d -> %d", a.i, b.i)
				}
			}
		}
		return nil
	})
}

// ethFrame builds a frame with an experimental EtherType and payload.
func ethFrame(dst, src [6]byte, payload string, size int) []byte {
	f := make([]byte, max(14+len(payload), size))
	copy(f[0:6], dst[:])
	copy(f[6:12], src[:])
	binary.BigEndian.PutUint16(f[12:14], 0x88b5)
	copy(f[14:], payload)
	return f
}

var bcast = [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// expectFrame waits for a frame containing marker on n's bridge side; frames without it
// are skipped (and returned in skipped).
func expectFrame(t *testing.T, n *node, marker string, within time.Duration) []byte {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case f := <-n.tap.Written():
			if bytes.Contains(f, []byte(marker)) {
				return f
			}
		case <-deadline:
			t.Fatalf("node %d: no frame with %q within %v", n.i, marker, within)
			return nil
		}
	}
}

// noFrame checks that nothing containing marker is waiting on n's bridge side, after a
// later frame (fence) has arrived, which proves that the path was flushed.
func countFrames(t *testing.T, n *node, marker, fence string, within time.Duration) int {
	t.Helper()
	deadline := time.After(within)
	count := 0
	for {
		select {
		case f := <-n.tap.Written():
			if bytes.Contains(f, []byte(marker)) {
				count++
			}
			if bytes.Contains(f, []byte(fence)) {
				return count
			}
		case <-deadline:
			t.Fatalf("node %d: fence %q did not arrive within %v (%d of %q so far)", n.i, fence, within, count, marker)
			return count
		}
	}
}

func addrPort(i int) netip.AddrPort { return netip.MustParseAddrPort(hostAddr(i) + ":6783") }

func macSlice(i, c int) []byte { m := mac(i, c); return m[:] }

func (l *lab) dumpOnFailure() {
	l.t.Cleanup(func() {
		if l.t.Failed() {
			for _, n := range l.nodes {
				l.t.Logf("node %d router %+v sleeve %+v tapdrops %d", n.i, n.r.Stats(), n.s.Stats(), n.tap.Dropped())
			}
		}
	})
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

// waitSettled waits until every node's topology has every peer with all its connections
// established and the same view as every other node: only then are the broadcast trees
// the same everywhere, so that each broadcast reaches each peer exactly once.
func (l *lab) waitSettled(conns map[mesh.PeerName]int) {
	l.t.Helper()
	testutil.Eventually(l.t, 10*time.Second, "topology settled", func() error {
		for _, n := range l.nodes {
			st := n.m.Status()
			if len(st.Peers) != len(l.nodes) {
				return fmt.Errorf("node %d knows %d peers", n.i, len(st.Peers))
			}
			for _, p := range st.Peers {
				est := 0
				for _, c := range p.Connections {
					if c.Established {
						est++
					}
				}
				if est != conns[p.Name] {
					return fmt.Errorf("node %d sees %v with %d established connections, want %d", n.i, p.Name, est, conns[p.Name])
				}
			}
		}
		return nil
	})
	l.waitRoutes()
}
