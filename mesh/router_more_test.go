package mesh

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/testutil"
)

func connCount(r *Router) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.conns)
}

func connTo(r *Router, p PeerName) *meshConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.conns[p]
}

// TestSimultaneousDialOneSurvives: two peers dialling each other at once end with exactly
// one connection, the same one on both ends, and it stays.
func TestSimultaneousDialOneSurvives(t *testing.T) {
	for i := range 3 {
		mn := NewMemNetwork()
		rs := startRouters(t, []Config{testConfig(mn, 0), testConfig(mn, 1)})
		// Both listen; now both dial at once.
		var wg sync.WaitGroup
		for i, r := range rs {
			wg.Add(1)
			go func() { defer wg.Done(); r.Connect([]string{hostOf(1 - i)}, false) }()
		}
		wg.Wait()
		testutil.Eventually(t, 5*time.Second, "one connection each", func() error {
			a, b := connTo(rs[0], rs[1].Name()), connTo(rs[1], rs[0].Name())
			if a == nil || b == nil {
				return errors.New("not connected")
			}
			if a.intro.ConnID != b.intro.ConnID {
				return fmt.Errorf("different connections kept: %x vs %x", a.intro.ConnID, b.intro.ConnID)
			}
			return nil
		})
		testutil.Eventually(t, 5*time.Second, "both dials finished", func() error {
			for _, r := range rs {
				if s := r.Status(); len(s.Connections) != 1 || s.Connections[0].State != StateEstablished {
					return fmt.Errorf("connections: %+v", s.Connections)
				}
			}
			return nil
		})
		a, b := connTo(rs[0], rs[1].Name()), connTo(rs[1], rs[0].Name())
		if a == nil || b == nil || a.intro.ConnID != b.intro.ConnID || connCount(rs[0]) != 1 || connCount(rs[1]) != 1 {
			t.Fatalf("round %d: not exactly one shared connection after settling", i)
		}
		// At most the one losing connection was torn down on each side.
		for _, r := range rs {
			if n := r.Status().Stats.Terminations; n > 1 {
				t.Fatalf("round %d: %d connections torn down", i, n)
			}
		}
		for _, r := range rs {
			r.Close()
		}
	}
}

func TestConnectToSelfIsNotRetried(t *testing.T) {
	mn := NewMemNetwork()
	c := testConfig(mn, 0)
	c.Peers = []string{hostOf(0)}
	rs := startRouters(t, []Config{c})
	testutil.Eventually(t, 5*time.Second, "self target suspended", func() error {
		s := rs[0].Status()
		if len(s.Connections) != 1 || s.Connections[0].State != StateFailed || !strings.Contains(s.Connections[0].Info, "ourselves") {
			return fmt.Errorf("%+v", s.Connections)
		}
		return nil
	})
	if n := connCount(rs[0]); n != 0 {
		t.Fatalf("%d connections to self", n)
	}
}

// TestNameClaimRefusedDirect: a second router with our name (a clone, or an impostor with a
// made-up older start time) connecting to us is refused with "name in use" and counted;
// neither stops, and the running one keeps its other connections.
func TestNameClaimRefusedDirect(t *testing.T) {
	mn := NewMemNetwork()
	c0, c1, c2 := testConfig(mn, 0), testConfig(mn, 1), testConfig(mn, 2)
	c1.Peers = []string{hostOf(0)}
	rs := startRouters(t, []Config{c0, c1})
	testutil.Eventually(t, 5*time.Second, "converged", func() error { return converged(rs) })
	// The claimant started "earlier" than anyone: under the old rule that made us yield.
	c2.Name = c0.Name
	c2.Peers = []string{hostOf(0)}
	claimant := startClaimant(t, c2)
	testutil.Eventually(t, 5*time.Second, "claim refused as name in use", func() error {
		if n := rs[0].counters.NameInUse.Load(); n == 0 {
			return errors.New("not refused yet")
		}
		return nil
	})
	checkUnharmed(t, rs)
	if connCount(claimant) != 0 {
		t.Fatal("claimant kept a connection under our name")
	}
	select {
	case <-claimant.Done():
		t.Fatal("claimant stopped: a remote refusal must not stop a router either")
	default:
	}
}

// TestNameClaimRefusedThroughNeighbour: a router claiming the name of a peer connected to
// the hub (twice, with an older start time) is refused by the hub; the real peer is not
// told to stop, keeps running and keeps its connection.
func TestNameClaimRefusedThroughNeighbour(t *testing.T) {
	mn := NewMemNetwork()
	hub, c1, c2 := testConfig(mn, 0), testConfig(mn, 1), testConfig(mn, 2)
	c1.Peers = []string{hostOf(0)}
	rs := startRouters(t, []Config{hub, c1})
	testutil.Eventually(t, 5*time.Second, "first converges", func() error { return converged(rs) })
	realConn := connTo(rs[0], c1.Name)
	for i := range 2 {
		c := c2
		c.Name = c1.Name
		c.UID = uint64(1000 + i)
		c.Peers = []string{hostOf(0)}
		claimant := startClaimant(t, c)
		testutil.Eventually(t, 5*time.Second, "claim refused", func() error {
			if n := rs[0].counters.NameInUse.Load(); n < uint64(i+1) {
				return fmt.Errorf("name_in_use %d", n)
			}
			return nil
		})
		claimant.Close()
	}
	checkUnharmed(t, rs)
	if c := connTo(rs[0], c1.Name); c != realConn {
		t.Fatal("hub replaced the real peer's connection")
	}
}

// startClaimant starts a router that claims to have started long before anyone else.
func startClaimant(t *testing.T, c Config) *Router {
	t.Helper()
	r, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	r.topo.started = 1
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// checkUnharmed: every router in rs is running and still converged with the others.
func checkUnharmed(t *testing.T, rs []*Router) {
	t.Helper()
	for i, r := range rs {
		select {
		case <-r.Done():
			t.Fatalf("router %d stopped", i)
		default:
		}
		if !r.Ready() {
			t.Fatalf("router %d not ready", i)
		}
	}
	if err := converged(rs); err != nil {
		t.Fatalf("no longer converged: %v", err)
	}
}

// TestNATedPeerStaysMember: a peer nobody can dial (behind NAT) that dials out to a public
// peer is a full member: routes reach it, and discovery does not replace its connection.
func TestNATedPeerStaysMember(t *testing.T) {
	mn := NewMemNetwork()
	pub, nat, other := testConfig(mn, 0), testConfig(mn, 1), testConfig(mn, 2)
	nat.Peers = []string{hostOf(0)}
	other.Peers = []string{hostOf(0)}
	mn.Block("10.0.0.3", "10.0.0.2", true) // "other" cannot reach the NATed host
	rs := startRouters(t, []Config{pub, nat, other})
	testutil.Eventually(t, 5*time.Second, "converged", func() error { return converged(rs) })
	testutil.Eventually(t, 5*time.Second, "route to NATed peer via public peer", func() error {
		if hop, ok := rs[2].UnicastNextHop(rs[1].Name()); !ok || hop != rs[0].Name() {
			return fmt.Errorf("route = %v %v", hop, ok)
		}
		return nil
	})
	// The peer that cannot reach the NATed one backs off instead of redialling on every
	// topology update.
	testutil.Eventually(t, 5*time.Second, "discovered NATed target backing off", func() error {
		for _, c := range rs[2].Status().Connections {
			if c.Address == hostOf(1) && c.State == StateFailed && !c.NextRetry.IsZero() {
				return nil
			}
		}
		return fmt.Errorf("%+v", rs[2].Status().Connections)
	})
	// The public peer never dials the NATed one: it already has the connection the NATed
	// peer made.
	s := rs[0].Status()
	for _, c := range s.Connections {
		if c.Outbound {
			t.Fatalf("public peer dialled out: %+v", c)
		}
	}
	g := newTestGossiper()
	if _, err := rs[1].NewGossip("x", g); err != nil {
		t.Fatal(err)
	}
	s2, _ := rs[2].NewGossip("x", newTestGossiper())
	testutil.Eventually(t, 5*time.Second, "unicast to the NATed peer", func() error {
		if err := s2.GossipUnicast(rs[1].Name(), []byte("hi")); err != nil {
			return err
		}
		g.mu.Lock()
		defer g.mu.Unlock()
		if len(g.unicasts) == 0 {
			return errors.New("nothing arrived")
		}
		return nil
	})
}

func TestDiscoveryAndNoDiscovery(t *testing.T) {
	for _, noDisc := range []bool{false, true} {
		t.Run(fmt.Sprintf("no-discovery=%v", noDisc), func(t *testing.T) {
			mn := NewMemNetwork()
			cfgs := []Config{testConfig(mn, 0), testConfig(mn, 1), testConfig(mn, 2)}
			cfgs[1].Peers = []string{hostOf(0)}
			cfgs[2].Peers = []string{hostOf(0)}
			for i := range cfgs {
				cfgs[i].NoDiscovery = noDisc
			}
			rs := startRouters(t, cfgs)
			testutil.Eventually(t, 5*time.Second, "converged", func() error { return converged(rs) })
			if noDisc {
				if connTo(rs[1], rs[2].Name()) != nil || connTo(rs[2], rs[1].Name()) != nil {
					t.Fatal("peers connected through discovery with --no-discovery")
				}
				return
			}
			testutil.Eventually(t, 5*time.Second, "discovered peers connect", func() error {
				if connTo(rs[1], rs[2].Name()) == nil {
					return errors.New("1 and 2 not connected")
				}
				return nil
			})
		})
	}
}

func TestConnLimit(t *testing.T) {
	mn := NewMemNetwork()
	cfgs := []Config{testConfig(mn, 0), testConfig(mn, 1), testConfig(mn, 2)}
	cfgs[0].ConnLimit = 1
	for i := 1; i < 3; i++ {
		cfgs[i].Peers = []string{hostOf(0)}
		cfgs[i].NoDiscovery = true
	}
	rs := startRouters(t, cfgs)
	testutil.Eventually(t, 5*time.Second, "one peer connected", func() error {
		if connCount(rs[0]) != 1 {
			return fmt.Errorf("%d connections", connCount(rs[0]))
		}
		return nil
	})
	testutil.Eventually(t, 5*time.Second, "other refused", func() error {
		if s := rs[0].Status(); s.Stats.ConnectionsRefused == 0 {
			return errors.New("no connection refused yet")
		}
		for _, r := range rs[1:] {
			for _, c := range r.Status().Connections {
				if c.State == StateFailed && strings.Contains(c.Info, "connection limit") {
					return nil
				}
			}
		}
		return errors.New("the refused peer does not show the reason")
	})
	if n := connCount(rs[0]); n != 1 {
		t.Fatalf("%d connections with a limit of 1", n)
	}
}

func TestConnectForgetPersisted(t *testing.T) {
	dir := t.TempDir()
	mn := NewMemNetwork()
	c := testConfig(mn, 0)
	c.StateDir = dir
	c.Peers = []string{"10.9.9.9"}
	r := startRouters(t, []Config{c})[0]
	if err := r.Connect([]string{"10.9.9.8:7000", "bad:port:x"}, false); err == nil {
		t.Fatal("bad target accepted")
	}
	if err := r.Connect([]string{"10.9.9.8:7000"}, false); err != nil {
		t.Fatal(err)
	}
	want := []string{"10.9.9.8:7000", "10.9.9.9:6783"}
	if got := r.Targets(); !slices.Equal(got, want) {
		t.Fatalf("targets %v", got)
	}
	if err := r.Forget([]string{"10.9.9.9"}); err != nil {
		t.Fatal(err)
	}
	r.Close()
	c.Peers = nil
	r2, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	if got := r2.Targets(); !slices.Equal(got, []string{"10.9.9.8:7000"}) {
		t.Fatalf("targets after restart %v", got)
	}
	if err := r2.Connect([]string{"10.9.9.7"}, true); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, targetsFile))
	if string(b) != "10.9.9.7:6783\n" {
		t.Fatalf("targets file %q", b)
	}
	// The failing targets show as failed with a reason and a next retry time.
	r3 := startRouters(t, []Config{c})[0]
	testutil.Eventually(t, 5*time.Second, "failed target shown", func() error {
		for _, cs := range r3.Status().Connections {
			if cs.Address == "10.9.9.7:6783" && cs.State == StateFailed && cs.Info != "" && !cs.NextRetry.IsZero() {
				return nil
			}
		}
		return fmt.Errorf("%+v", r3.Status().Connections)
	})
}

// TestHeartbeatTimeout: a peer that completes the handshake and then goes silent is dropped
// after twice the heartbeat interval.
func TestHeartbeatTimeout(t *testing.T) {
	mn := NewMemNetwork()
	c := testConfig(mn, 0)
	c.HeartbeatInterval = 100 * time.Millisecond
	r := startRouters(t, []Config{c})[0]
	nc, err := mn.Transport("10.0.0.99").Dial(context.Background(), hostOf(0))
	if err != nil {
		t.Fatal(err)
	}
	conn, _, err := handshake(context.Background(), nc, handshakeParams{Name: 0x0b0000000001, NickName: "silent", UID: 5, Outbound: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Drain what the router sends (so its writes do not block) but never answer.
	errc := make(chan error, 1)
	go func() {
		for {
			if _, err := conn.Receive(); err != nil {
				errc <- err
				return
			}
		}
	}()
	testutil.Eventually(t, 2*time.Second, "connection registered", func() error {
		if connCount(r) != 1 {
			return errors.New("not yet")
		}
		return nil
	})
	start := time.Now()
	select {
	case <-errc:
	case <-time.After(5 * time.Second):
		t.Fatal("silent peer never dropped")
	}
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Fatalf("dropped after %v, before the read deadline", d)
	}
	testutil.Eventually(t, 2*time.Second, "connection removed", func() error {
		if connCount(r) != 0 {
			return errors.New("still there")
		}
		return nil
	})
}

// TestGCAndUnknownChannelRelay: a-b-c in a line. b does not know channel "x", yet a's
// broadcasts and unicasts on it reach c. When c goes, a and b garbage-collect it.
func TestGCAndUnknownChannelRelay(t *testing.T) {
	mn := NewMemNetwork()
	cfgs := []Config{testConfig(mn, 0), testConfig(mn, 1), testConfig(mn, 2)}
	cfgs[1].Peers = []string{hostOf(0)}
	cfgs[2].Peers = []string{hostOf(1)}
	for i := range cfgs {
		cfgs[i].NoDiscovery = true
	}
	rs := startRouters(t, cfgs)
	var mu sync.Mutex
	gced := map[PeerName][]PeerName{}
	for _, r := range rs[:2] {
		r.OnPeerGC(func(p PeerName) { mu.Lock(); gced[r.Name()] = append(gced[r.Name()], p); mu.Unlock() })
	}
	testutil.Eventually(t, 5*time.Second, "converged", func() error { return converged(rs) })
	ga, gc := newTestGossiper(), newTestGossiper()
	sa, _ := rs[0].NewGossip("x", ga)
	rs[2].NewGossip("x", gc)
	sa.GossipBroadcast(testData{"hello-all"})
	if err := sa.GossipUnicast(rs[2].Name(), []byte("hello-c")); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "relayed through b", func() error {
		gc.mu.Lock()
		defer gc.mu.Unlock()
		if !gc.state["hello-all"] || !slices.Contains(gc.unicasts, "hello-c") {
			return fmt.Errorf("state %v unicasts %v", gc.state, gc.unicasts)
		}
		if gc.bcasts["hello-all"] != 1 {
			return fmt.Errorf("broadcast arrived %d times", gc.bcasts["hello-all"])
		}
		return nil
	})
	rs[2].Close()
	testutil.Eventually(t, 5*time.Second, "c collected", func() error {
		mu.Lock()
		defer mu.Unlock()
		for _, r := range rs[:2] {
			if !slices.Contains(gced[r.Name()], rs[2].Name()) {
				return fmt.Errorf("%s did not collect c", r.Name())
			}
			if slices.Contains(r.Peers(), rs[2].Name()) {
				return fmt.Errorf("%s still lists c", r.Name())
			}
		}
		return nil
	})
}

type testOverlay struct {
	mu      sync.Mutex
	up      []ConnInfo
	down    []PeerName
	control [][]byte
}

func (o *testOverlay) ConnectionUp(ci ConnInfo) { o.mu.Lock(); o.up = append(o.up, ci); o.mu.Unlock() }
func (o *testOverlay) ConnectionDown(p PeerName, id uint64) {
	o.mu.Lock()
	o.down = append(o.down, p)
	o.mu.Unlock()
}
func (o *testOverlay) OverlayControl(p PeerName, id uint64, msg []byte) {
	o.mu.Lock()
	o.control = append(o.control, slices.Clone(msg))
	o.mu.Unlock()
}

func TestOverlayConfirmsConnections(t *testing.T) {
	mn := NewMemNetwork()
	c0, c1 := testConfig(mn, 0), testConfig(mn, 1)
	o0, o1 := &testOverlay{}, &testOverlay{}
	c0.Overlay, c1.Overlay = o0, o1
	c0.OverlayConfirms, c1.OverlayConfirms = true, true
	c0.Password, c1.Password = []byte("secret"), []byte("secret")
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	c0.TrustedSubnets, c1.TrustedSubnets = trusted, trusted
	c1.Peers = []string{hostOf(0)}
	rs := startRouters(t, []Config{c0, c1})
	testutil.Eventually(t, 5*time.Second, "overlays told", func() error {
		o0.mu.Lock()
		defer o0.mu.Unlock()
		o1.mu.Lock()
		defer o1.mu.Unlock()
		if len(o0.up) != 1 || len(o1.up) != 1 {
			return errors.New("not yet")
		}
		return nil
	})
	ci0, ci1 := o0.up[0], o1.up[0]
	if ci0.ConnID != ci1.ConnID || !ci0.HasKeys || ci0.SendKey != ci1.RecvKey || !ci0.Encrypted || !ci0.Trusted || !ci1.Trusted {
		t.Fatalf("conn info disagrees: %+v vs %+v", ci0, ci1)
	}
	if st := rs[0].Status(); st.Connections[0].State != StatePending {
		t.Fatalf("state before confirmation: %+v", st.Connections)
	}
	testutil.Eventually(t, 5*time.Second, "converged", func() error { return converged(rs) })
	if _, ok := rs[0].UnicastNextHop(rs[1].Name()); ok {
		t.Fatal("data route over an unconfirmed connection")
	}
	if err := rs[0].SetEstablished(ci0.Peer, ci0.ConnID, true); err != nil {
		t.Fatal(err)
	}
	if err := rs[1].SetEstablished(ci1.Peer, ci1.ConnID, true); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "data route after both confirmed", func() error {
		if _, ok := rs[0].UnicastNextHop(rs[1].Name()); !ok {
			return errors.New("no route")
		}
		return nil
	})
	if err := rs[0].SendOverlayControl(ci0.Peer, ci0.ConnID, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	if err := rs[0].SendOverlayControl(ci0.Peer, ci0.ConnID+1, []byte("ping")); !errors.Is(err, ErrUnknownConn) {
		t.Fatalf("control to a wrong connection: %v", err)
	}
	testutil.Eventually(t, 5*time.Second, "overlay control delivered", func() error {
		o1.mu.Lock()
		defer o1.mu.Unlock()
		if len(o1.control) != 1 || string(o1.control[0]) != "ping" {
			return fmt.Errorf("%q", o1.control)
		}
		return nil
	})
	// The overlay gives up on the data path: the connection goes, both overlays hear of it.
	if err := rs[0].DropConnection(ci0.Peer, ci0.ConnID, errors.New("no working forwarders")); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "both overlays told", func() error {
		for _, o := range []*testOverlay{o0, o1} {
			o.mu.Lock()
			n := len(o.down)
			o.mu.Unlock()
			if n == 0 {
				return errors.New("no ConnectionDown yet")
			}
		}
		return nil
	})
}

// TestRouters100Converge: 100 routers over the in-memory network, on a random partial
// topology, end with the same topology and routes that match the ground truth. Under the
// race detector 100 routers' periodic gossip (O(n^2) work per interval) outruns 2 cores and
// convergence took ~3 minutes; 40 routers exercise the same code for races, and the scale
// claim is checked by the run without -race.
func TestRouters100Converge(t *testing.T) {
	n := 100
	if testutil.RaceEnabled {
		n = 40
	}
	mn := NewMemNetwork()
	rng := rand.New(rand.NewPCG(42, 43))
	cfgs := make([]Config, n)
	for i := range cfgs {
		cfgs[i] = testConfig(mn, i)
		cfgs[i].NoDiscovery = true
		cfgs[i].HeartbeatInterval = 10 * time.Second
		if i > 0 {
			cfgs[i].Peers = []string{hostOf(rng.IntN(i))}
			if rng.IntN(2) == 0 {
				cfgs[i].Peers = append(cfgs[i].Peers, hostOf(rng.IntN(i)))
			}
		}
	}
	start := time.Now()
	rs := startRouters(t, cfgs)
	testutil.Eventually(t, 30*time.Second, fmt.Sprintf("%d routers converge", n), func() error { return converged(rs) })
	t.Logf("%d routers converged in %v", n, time.Since(start))
	// Ground truth: every router's own entry.
	truth := map[PeerName]*peerEntry{}
	for _, r := range rs {
		r.mu.Lock()
		e := *r.topo.self
		r.mu.Unlock()
		truth[e.Name] = &e
	}
	for _, r := range rs {
		want := newRouteTable(r.Name(), truth).unicast
		testutil.Eventually(t, 5*time.Second, "routes match ground truth", func() error {
			r.mu.Lock()
			r.topo.recompute()
			got := r.topo.rt.unicast
			r.mu.Unlock()
			if !maps.Equal(got, want) || len(got) != n-1 {
				return fmt.Errorf("%s: %d routes, want %d", r.Name(), len(got), len(want))
			}
			return nil
		})
	}
}

func TestLoadOrCreateName(t *testing.T) {
	dir := t.TempDir()
	mid := func() []byte { return []byte("same-machine-id") }
	a, err := loadOrCreateName(dir, "", mid)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := loadOrCreateName(dir, "", mid); err != nil || b != a {
		t.Fatalf("name not stable across restarts: %s then %s (%v)", a, b, err)
	}
	// A clone with the same machine-id but a fresh state dir gets another name.
	if c, _ := loadOrCreateName(t.TempDir(), "", mid); c == a {
		t.Fatal("cloned machine got the same name")
	}
	if a.Bytes()[0]&1 != 0 || a.Bytes()[0]&2 == 0 {
		t.Fatalf("name %s is not a locally administered unicast MAC", a)
	}
	o, err := loadOrCreateName(dir, "::5", mid)
	if err != nil || o != 5 {
		t.Fatalf("override: %s %v", o, err)
	}
	if p, _ := loadOrCreateName(dir, "", mid); p != 5 {
		t.Fatalf("override not persisted: %s", p)
	}
	if _, err := loadOrCreateName(dir, "nonsense", mid); err == nil {
		t.Fatal("bad override accepted")
	}
	os.WriteFile(filepath.Join(dir, peerNameFile), []byte("garbage"), 0o600)
	if _, err := loadOrCreateName(dir, "", mid); err == nil {
		t.Fatal("corrupt name file accepted")
	}
}

func TestTokenBucketAllow(t *testing.T) {
	now := time.Unix(0, 0)
	b := newTokenBucket(sourceBurst, sourceRefill, now)
	for i := range sourceBurst {
		if !b.allow(now) {
			t.Fatalf("attempt %d within the burst refused", i)
		}
	}
	// Beyond the burst: refused, and refusals do not put the bucket into debt.
	for range 100 {
		if b.allow(now) {
			t.Fatal("attempt over the burst allowed")
		}
	}
	if !b.allow(now.Add(sourceRefill)) {
		t.Fatal("no token one refill period after a long refused flood")
	}
	// After a quiet while the bucket is full again, never fuller.
	now = now.Add(time.Hour)
	for range sourceBurst {
		if !b.allow(now) {
			t.Fatal("bucket did not refill")
		}
	}
	if b.allow(now) {
		t.Fatal("bucket overfilled")
	}
}

// TestTCPLoopback: the production transport, on loopback only, with encryption.
func TestTCPLoopback(t *testing.T) {
	mk := func(i int, peers []string) Config {
		return Config{
			Name: PeerName(0x0c0000000000 + uint64(i+1)), NickName: fmt.Sprintf("tcp%d", i),
			ListenAddr: "127.0.0.1:0", Password: []byte("pw"), Logger: testLogger(), NoMemberlist: true,
			Peers: peers, TopologyDelay: 20 * time.Millisecond, RouteDelay: 10 * time.Millisecond,
		}
	}
	a := startRouters(t, []Config{mk(0, nil)})[0]
	b := startRouters(t, []Config{mk(1, []string{a.ListenAddr().String()})})[0]
	testutil.Eventually(t, 5*time.Second, "connected over TCP", func() error { return converged([]*Router{a, b}) })
	s := b.Status()
	if len(s.Connections) != 1 || !s.Connections[0].Encrypted || !s.Encryption {
		t.Fatalf("status: %+v", s.Connections)
	}
}

// TestPeerRestart: a peer that restarts with the same name (new UID) rejoins; it is not
// mistaken for a name collision, and everyone ends up with the new incarnation.
func TestPeerRestart(t *testing.T) {
	mn := NewMemNetwork()
	c0, c1 := testConfig(mn, 0), testConfig(mn, 1)
	c1.Peers = []string{hostOf(0)}
	rs := startRouters(t, []Config{c0, c1})
	testutil.Eventually(t, 5*time.Second, "converged", func() error { return converged(rs) })
	rs[1].Close()
	again := startRouters(t, []Config{c1})[0]
	if again.UID() == rs[1].UID() {
		t.Fatal("restart kept the UID")
	}
	both := []*Router{rs[0], again}
	testutil.Eventually(t, 10*time.Second, "rejoined", func() error {
		if err := converged(both); err != nil {
			return err
		}
		for _, p := range rs[0].Status().Peers {
			if p.Name == again.Name() && p.UID != again.UID() {
				return fmt.Errorf("peer 0 still has uid %d", p.UID)
			}
		}
		return nil
	})
	checkUnharmed(t, both)
}

// TestGossipBroadcastExactlyOnce: on a random mesh of routers, a broadcast reaches every
// peer exactly once.
func TestGossipBroadcastExactlyOnce(t *testing.T) {
	const n = 20
	mn := NewMemNetwork()
	rng := rand.New(rand.NewPCG(7, 8))
	cfgs := make([]Config, n)
	for i := range cfgs {
		cfgs[i] = testConfig(mn, i)
		cfgs[i].NoDiscovery = true
		for j := 0; i > 0 && j < 1+rng.IntN(3); j++ {
			cfgs[i].Peers = append(cfgs[i].Peers, hostOf(rng.IntN(i)))
		}
	}
	rs := startRouters(t, cfgs)
	testutil.Eventually(t, 10*time.Second, "converged", func() error { return converged(rs) })
	gs := make([]*testGossiper, n)
	var senders []Gossip
	for i, r := range rs {
		gs[i] = newTestGossiper()
		s, err := r.NewGossip("bc", gs[i])
		if err != nil {
			t.Fatal(err)
		}
		senders = append(senders, s)
	}
	for k, origin := range []int{0, n / 2, n - 1} {
		msg := fmt.Sprintf("from-%d", origin)
		// Routes settle after the topology: wait until the origin's tree covers everyone.
		testutil.Eventually(t, 5*time.Second, "routes settled", func() error {
			for _, r := range rs {
				if len(r.Routes().rt.unicastAll) != n-1 {
					return fmt.Errorf("%s: incomplete routes", r.Name())
				}
			}
			return nil
		})
		senders[origin].GossipBroadcast(testData{msg})
		testutil.Eventually(t, 5*time.Second, "broadcast everywhere", func() error {
			for i, g := range gs {
				if i == origin {
					continue
				}
				g.mu.Lock()
				c := g.bcasts[msg]
				g.mu.Unlock()
				if c != 1 {
					return fmt.Errorf("round %d: router %d got it %d times", k, i, c)
				}
			}
			return nil
		})
	}
	// And no late duplicates: a final broadcast from 0 is delivered once; by then any
	// duplicate of the earlier ones would have arrived before it on the same paths.
	senders[0].GossipBroadcast(testData{"fence"})
	testutil.Eventually(t, 5*time.Second, "fence everywhere", func() error {
		for i, g := range gs[1:] {
			g.mu.Lock()
			c := g.bcasts["fence"]
			g.mu.Unlock()
			if c != 1 {
				return fmt.Errorf("router %d got the fence %d times", i+1, c)
			}
		}
		return nil
	})
	for i, g := range gs {
		g.mu.Lock()
		for m, c := range g.bcasts {
			if c != 1 {
				t.Errorf("router %d got %q %d times", i, m, c)
			}
		}
		g.mu.Unlock()
	}
}

// TestCloseLeavesNoGoroutines: every goroutine a router starts (connections, handshakes,
// dials, timers, memberlist) ends with Close, and Close is idempotent.
func TestCloseLeavesNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	mn := NewMemNetwork()
	cfgs := []Config{testConfig(mn, 0), testConfig(mn, 1), testConfig(mn, 2)}
	for i := range cfgs {
		fastMemberlist(&cfgs[i])
	}
	cfgs[1].Peers = []string{hostOf(0), "10.9.9.9"} // one target that never answers
	cfgs[2].Peers = []string{hostOf(1)}
	var rs []*Router
	for _, c := range cfgs {
		r, err := New(c)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Start(); err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	testutil.Eventually(t, 10*time.Second, "alive everywhere", func() error { return allSee(rs, rs, MemberAlive) })
	for _, r := range rs {
		r.Close()
		r.Close()
		if r.Ready() {
			t.Fatal("closed router still ready")
		}
	}
	testutil.Eventually(t, 5*time.Second, "goroutines gone", func() error {
		if n := runtime.NumGoroutine(); n > before {
			return fmt.Errorf("%d goroutines, %d before", n, before)
		}
		return nil
	})
}

// TestHostileMessagesCountedNotFatal: garbage from an authenticated peer is dropped and
// counted; the router and the connection survive.
func TestHostileMessagesCountedNotFatal(t *testing.T) {
	mn := NewMemNetwork()
	r := startRouters(t, []Config{testConfig(mn, 0)})[0]
	nc, err := mn.Transport("10.0.0.99").Dial(context.Background(), hostOf(0))
	if err != nil {
		t.Fatal(err)
	}
	conn, _, err := handshake(context.Background(), nc, handshakeParams{Name: 0x0b0000000002, NickName: "evil", UID: 6, Outbound: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	go func() {
		for {
			if _, err := conn.Receive(); err != nil {
				return
			}
		}
	}()
	bad := [][]byte{
		{},
		{99},
		{tagTopoUpdate, 0xff, 0xff, 0xff, 0xff, 0x0f},
		{tagTopoBroadcast, 1, 2},
		{tagTopoDigest, 5},
		{tagGossipUnicast, 3},
		{tagGossipBroadcast, 200, 'x'},
		{tagNameInUse, 1},
		{tagTopoHash},
	}
	for _, m := range bad {
		if err := conn.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, 5*time.Second, "all counted", func() error {
		if n := r.Status().Stats.MalformedMessages; n < uint64(len(bad)) {
			return fmt.Errorf("%d of %d counted", n, len(bad))
		}
		return nil
	})
	if connCount(r) != 1 || !r.Ready() {
		t.Fatalf("connection dropped (%d) or router stopped", connCount(r))
	}
}

// TestForgedClaimsAboutUsNotFatal: a peer that passed the handshake under its own name then
// claims, through gossip, that a live peer with our name started before us: a well-formed
// "name in use" notice, and a topology entry for our name with another UID and a current
// version. Neither stops us nor takes our entry over.
func TestForgedClaimsAboutUsNotFatal(t *testing.T) {
	mn := NewMemNetwork()
	r := startRouters(t, []Config{testConfig(mn, 0)})[0]
	nc, err := mn.Transport("10.0.0.99").Dial(context.Background(), hostOf(0))
	if err != nil {
		t.Fatal(err)
	}
	conn, _, err := handshake(context.Background(), nc, handshakeParams{Name: 0x0b0000000002, NickName: "evil", UID: 6, Outbound: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	go func() {
		for {
			if _, err := conn.Receive(); err != nil {
				return
			}
		}
	}()
	var w wbuf
	w.u8(tagNameInUse)
	w.u64(r.UID() + 1) // another incarnation
	w.u64(1)           // "started" at the dawn of time: older than us
	w.u64(0)           // "heard just now": alive
	w.str8("evil")
	now := uint64(time.Now().UnixMicro())
	forged := &peerEntry{Name: r.Name(), NickName: "evil", UID: r.UID() + 1, Version: now + 1_000_000, Started: 1}
	msgs := append([][]byte{w.b}, encodeUpdate([]*peerEntry{forged}, []byte{tagTopoUpdate})...)
	for _, m := range msgs {
		if err := conn.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, 5*time.Second, "self claim seen", func() error {
		if n := r.Status().Stats.SelfClaims; n == 0 {
			return errors.New("not yet")
		}
		return nil
	})
	// Give a fatal reaction (asynchronous in the old code) the time to happen.
	select {
	case <-r.Done():
		t.Fatal("router stopped on a forged claim")
	case <-time.After(200 * time.Millisecond):
	}
	if connCount(r) != 1 || !r.Ready() {
		t.Fatalf("connection dropped (%d) or router stopped", connCount(r))
	}
	for _, p := range r.Status().Peers {
		if p.Name == r.Name() && p.UID != r.UID() {
			t.Fatalf("our entry taken over by uid %d", p.UID)
		}
	}
}
