package mesh

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/testutil"
)

func testLogger() *slog.Logger {
	if os.Getenv("MESH_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// testConfig returns a fast-timing config for router i on a MemNetwork.
func testConfig(net *MemNetwork, i int) Config {
	host := fmt.Sprintf("10.0.%d.%d", i/250, i%250+1)
	return Config{
		Name:              PeerName(0x0a0000000000 + uint64(i+1)),
		NickName:          fmt.Sprintf("h%d", i),
		ListenAddr:        host + ":6783",
		Transport:         net.Transport(host),
		Logger:            testLogger(),
		NoMemberlist:      true,
		HeartbeatInterval: 2 * time.Second,
		GossipInterval:    500 * time.Millisecond,
		TopologyInterval:  200 * time.Millisecond,
		TopologyDelay:     20 * time.Millisecond,
		RouteDelay:        10 * time.Millisecond,
		HandshakeTimeout:  5 * time.Second,
	}
}

func hostOf(i int) string { return fmt.Sprintf("10.0.%d.%d:6783", i/250, i%250+1) }

func startRouters(t *testing.T, cfgs []Config) []*Router {
	t.Helper()
	rs := make([]*Router, len(cfgs))
	for i, c := range cfgs {
		r, err := New(c)
		if err != nil {
			t.Fatalf("New %d: %v", i, err)
		}
		if err := r.Start(); err != nil {
			t.Fatalf("Start %d: %v", i, err)
		}
		rs[i] = r
		t.Cleanup(func() { r.Close() })
	}
	return rs
}

// converged checks that every router knows exactly the peers in names and that each has
// the same unicast routes as a table computed from router 0's topology for that peer.
func converged(rs []*Router) error {
	want := make([]PeerName, 0, len(rs))
	for _, r := range rs {
		want = append(want, r.Name())
	}
	slices.Sort(want)
	var h0 uint64
	for i, r := range rs {
		got := r.Peers()
		if !slices.Equal(got, want) {
			return fmt.Errorf("router %d knows %d peers, want %d", i, len(got), len(want))
		}
		r.mu.Lock()
		h := r.topo.hash
		r.mu.Unlock()
		if i == 0 {
			h0 = h
		} else if h != h0 {
			return fmt.Errorf("router %d topology hash %x != router 0's %x", i, h, h0)
		}
	}
	return nil
}

func TestTwoRoutersConnectAndGossip(t *testing.T) {
	mn := NewMemNetwork()
	c0, c1 := testConfig(mn, 0), testConfig(mn, 1)
	c1.Peers = []string{hostOf(0)}
	rs := startRouters(t, []Config{c0, c1})
	testutil.Eventually(t, 5*time.Second, "two routers converge", func() error { return converged(rs) })
	testutil.Eventually(t, 5*time.Second, "route to peer", func() error {
		if hop, ok := rs[0].UnicastNextHop(rs[1].Name()); !ok || hop != rs[1].Name() {
			return fmt.Errorf("route 0->1 = %v %v", hop, ok)
		}
		return nil
	})
	if err := rs[0].Start(); err == nil {
		t.Fatal("second Start accepted")
	}
	st := rs[1].Status()
	if len(st.Connections) != 1 || st.Connections[0].State != StateEstablished || !st.Connections[0].Outbound {
		t.Fatalf("router 1 connections: %+v", st.Connections)
	}
	if !slices.Equal(st.Targets, []string{hostOf(0)}) {
		t.Fatalf("targets %v", st.Targets)
	}

	// Gossip channel: unicast and broadcast arrive.
	g0, g1 := newTestGossiper(), newTestGossiper()
	s0, err := rs[0].NewGossip("test", g0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rs[1].NewGossip("test", g1); err != nil {
		t.Fatal(err)
	}
	if err := s0.GossipUnicast(rs[1].Name(), []byte("hello")); err != nil {
		t.Fatal(err)
	}
	s0.GossipBroadcast(testData{"b1"})
	testutil.Eventually(t, 5*time.Second, "gossip delivered", func() error {
		g1.mu.Lock()
		defer g1.mu.Unlock()
		if !slices.Contains(g1.unicasts, "hello") || !g1.state["b1"] {
			return fmt.Errorf("unicasts %v state %v", g1.unicasts, g1.state)
		}
		return nil
	})
}

// testGossiper keeps a set of strings; its GossipData is a set too.
type testGossiper struct {
	mu       sync.Mutex
	state    map[string]bool
	unicasts []string
	bcasts   map[string]int
}

func newTestGossiper() *testGossiper {
	return &testGossiper{state: map[string]bool{}, bcasts: map[string]int{}}
}

type testData []string

func (d testData) Encode() [][]byte {
	out := make([][]byte, len(d))
	for i, s := range d {
		out[i] = []byte(s)
	}
	return out
}

func (d testData) Merge(o GossipData) GossipData { return append(d, o.(testData)...) }

func (g *testGossiper) OnGossipUnicast(src PeerName, msg []byte) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.unicasts = append(g.unicasts, string(msg))
	return nil
}

func (g *testGossiper) merge(msg []byte) GossipData {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.state[string(msg)] {
		return nil
	}
	g.state[string(msg)] = true
	return testData{string(msg)}
}

func (g *testGossiper) OnGossipBroadcast(src PeerName, update []byte) (GossipData, error) {
	g.mu.Lock()
	g.bcasts[string(update)]++
	g.mu.Unlock()
	return g.merge(update), nil
}

func (g *testGossiper) Gossip() GossipData {
	g.mu.Lock()
	defer g.mu.Unlock()
	var d testData
	for s := range g.state {
		d = append(d, s)
	}
	slices.Sort(d)
	if len(d) == 0 {
		return nil
	}
	return d
}

func (g *testGossiper) OnGossip(msg []byte) (GossipData, error) { return g.merge(msg), nil }

// TestStatusJSON: the keys CONTRACT.md promises for the report's router section.
func TestStatusJSON(t *testing.T) {
	mn := NewMemNetwork()
	c0, c1 := testConfig(mn, 0), testConfig(mn, 1)
	c1.Peers = []string{hostOf(0)}
	rs := startRouters(t, []Config{c0, c1})
	testutil.Eventually(t, 5*time.Second, "converged", func() error { return converged(rs) })
	b, err := json.Marshal(rs[1].Status())
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Name        string           `json:"name"`
		Peers       []map[string]any `json:"peers"`
		Connections []map[string]any `json:"connections"`
		Targets     []string         `json:"targets"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m.Name != rs[1].Name().String() || len(m.Peers) != 2 || len(m.Connections) != 1 || len(m.Targets) != 1 {
		t.Fatalf("status JSON: %s", b)
	}
	for _, k := range []string{"name", "nickname", "uid", "connections"} {
		if _, ok := m.Peers[0][k]; !ok {
			t.Errorf("peer without %q: %s", k, b)
		}
	}
	pc := m.Peers[0]["connections"].([]any)[0].(map[string]any)
	for _, k := range []string{"name", "address", "outbound", "established"} {
		if _, ok := pc[k]; !ok {
			t.Errorf("peer connection without %q: %s", k, b)
		}
	}
	for _, k := range []string{"peer", "address", "outbound", "state", "info", "encrypted"} {
		if _, ok := m.Connections[0][k]; !ok {
			t.Errorf("connection without %q: %s", k, b)
		}
	}
	if m.Connections[0]["peer"] != rs[0].Name().String() || m.Connections[0]["state"] != StateEstablished {
		t.Fatalf("connection: %v", m.Connections[0])
	}
}
