package mesh

import (
	"bytes"
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// randomGraph returns peer entries for n peers on a connected random graph (a random
// spanning tree plus extra random edges), every connection established and symmetric.
func randomGraph(rng *rand.Rand, n, extra int) map[PeerName]*peerEntry {
	names := make([]PeerName, n)
	for i := range names {
		names[i] = PeerName(rng.Uint64()>>16 | 1)
	}
	peers := map[PeerName]*peerEntry{}
	for _, nm := range names {
		peers[nm] = &peerEntry{Name: nm, UID: rng.Uint64() | 1, Version: 1}
	}
	link := func(a, b PeerName) {
		if a == b || peers[a].conn(b) != nil {
			return
		}
		for _, p := range [][2]PeerName{{a, b}, {b, a}} {
			e := peers[p[0]]
			e.Conns = append(e.Conns, connSummary{Name: p[1], Addr: "x", Outbound: p[0] < p[1], Established: true})
			slices.SortFunc(e.Conns, func(x, y connSummary) int { return cmp.Compare(x.Name, y.Name) })
		}
	}
	for i := 1; i < n; i++ {
		link(names[i], names[rng.IntN(i)])
	}
	for range extra {
		link(names[rng.IntN(n)], names[rng.IntN(n)])
	}
	return peers
}

// TestBroadcastTreesExactlyOnce: on random graphs, every peer computes its forwarding set
// independently, and a broadcast from any origin reaches every peer exactly once.
func TestBroadcastTreesExactlyOnce(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 30 {
		n := 2 + rng.IntN(60)
		peers := randomGraph(rng, n, rng.IntN(3*n))
		tables := map[PeerName]*routeTable{}
		for nm := range peers {
			tables[nm] = newRouteTable(nm, peers)
		}
		for _, all := range []bool{true, false} {
			for origin := range peers {
				got := map[PeerName]int{origin: 1}
				queue := []PeerName{origin}
				for len(queue) > 0 {
					cur := queue[0]
					queue = queue[1:]
					for _, hop := range tables[cur].broadcastHops(origin, all) {
						got[hop]++
						queue = append(queue, hop)
					}
				}
				for nm := range peers {
					if got[nm] != 1 {
						t.Fatalf("trial %d (n=%d, all=%v): broadcast from %s reached %s %d times", trial, n, all, origin, nm, got[nm])
					}
				}
			}
		}
	}
}

// TestUnicastRoutesShortestAndConsistent: following first hops from any peer reaches any
// destination along a shortest path.
func TestUnicastRoutesShortestAndConsistent(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 20 {
		n := 2 + rng.IntN(50)
		peers := randomGraph(rng, n, rng.IntN(2*n))
		tables := map[PeerName]*routeTable{}
		for nm := range peers {
			tables[nm] = newRouteTable(nm, peers)
		}
		for src := range peers {
			dist := bfsDist(peers, src)
			for dst := range peers {
				if dst == src {
					continue
				}
				hops, cur := 0, src
				for cur != dst {
					next, ok := tables[cur].unicast[dst]
					if !ok || peers[cur].conn(next) == nil {
						t.Fatalf("no usable route %s->%s at %s", src, dst, cur)
					}
					cur = next
					hops++
					if hops > n {
						t.Fatalf("routing loop %s->%s", src, dst)
					}
				}
				if hops != dist[dst] {
					t.Fatalf("route %s->%s takes %d hops, shortest is %d", src, dst, hops, dist[dst])
				}
			}
		}
	}
}

func bfsDist(peers map[PeerName]*peerEntry, src PeerName) map[PeerName]int {
	d := map[PeerName]int{src: 0}
	q := []PeerName{src}
	for len(q) > 0 {
		c := q[0]
		q = q[1:]
		for _, cn := range peers[c].Conns {
			if _, ok := d[cn.Name]; !ok {
				d[cn.Name] = d[c] + 1
				q = append(q, cn.Name)
			}
		}
	}
	return d
}

// TestUnicastNeedsEstablishedSymmetric: a connection only one side reports, or that is not
// established, is used by unicastAll (gossip) but not unicast (data).
func TestUnicastNeedsEstablishedSymmetric(t *testing.T) {
	a, b, c := PeerName(1), PeerName(2), PeerName(3)
	peers := map[PeerName]*peerEntry{
		a: {Name: a, Version: 1, Conns: []connSummary{{Name: b, Established: true}, {Name: c, Established: true}}},
		b: {Name: b, Version: 1, Conns: []connSummary{{Name: a, Established: true}}},
		c: {Name: c, Version: 1}, // does not (yet) report the connection back
	}
	rt := newRouteTable(a, peers)
	if _, ok := rt.unicast[c]; ok {
		t.Fatalf("unicast route to %s over an asymmetric connection", c)
	}
	if hop := rt.unicastAll[c]; hop != c {
		t.Fatalf("unicastAll to %s = %s", c, hop)
	}
	if hop := rt.unicast[b]; hop != b {
		t.Fatalf("unicast to %s = %s", b, hop)
	}
	peers[b].Conns[0].Established = false
	if _, ok := newRouteTable(a, peers).unicast[b]; ok {
		t.Fatal("unicast route over a pending connection")
	}
}

func newTestTopo(name PeerName, now *time.Time, sent *[]sentMsg) *topo {
	return newTopo(topoConfig{
		Self: name, UID: uint64(name) * 7, NickName: name.String(),
		Now:  func() time.Time { return *now },
		Rand: rand.New(rand.NewPCG(uint64(name), 1)),
		Send: func(to PeerName, msg []byte) { *sent = append(*sent, sentMsg{to, slices.Clone(msg)}) },
	})
}

type sentMsg struct {
	to  PeerName
	msg []byte
}

func TestMergeRules(t *testing.T) {
	now := time.Unix(1000, 0)
	var sent []sentMsg
	tp := newTestTopo(1, &now, &sent)
	x := PeerName(2)
	apply := func(e peerEntry) bool { e.hash = e.digestHash(); return tp.apply(&e) }

	if !apply(peerEntry{Name: x, UID: 5, Version: 10}) {
		t.Fatal("unknown peer not added")
	}
	if apply(peerEntry{Name: x, UID: 5, Version: 9}) {
		t.Fatal("older version accepted")
	}
	if apply(peerEntry{Name: x, UID: 5, Version: 10}) {
		t.Fatal("same version and uid counted as new")
	}
	if apply(peerEntry{Name: x, UID: 4, Version: 10}) {
		t.Fatal("same version, smaller uid accepted")
	}
	if !apply(peerEntry{Name: x, UID: 6, Version: 10, NickName: "bigger uid"}) {
		t.Fatal("same version, larger uid rejected")
	}
	if !apply(peerEntry{Name: x, UID: 6, Version: 11, Conns: []connSummary{{Name: 3}}}) {
		t.Fatal("newer version rejected")
	}
	if e := tp.peers[3]; e == nil || e.Version != 0 {
		t.Fatalf("referenced peer not added as placeholder: %+v", e)
	}
	if apply(peerEntry{Name: x, UID: 6, Version: 0}) {
		t.Fatal("placeholder entry accepted")
	}
	if apply(peerEntry{Name: x, UID: 6, Version: math.MaxUint64}) {
		t.Fatal("version far in the future accepted")
	}

	// An entry about ourselves from an older incarnation: we move above it, and it is not
	// a collision because all its versions predate our start.
	old := tp.self.Version
	if apply(peerEntry{Name: 1, UID: 99, Version: old - 5, Started: old - 100}) {
		t.Fatal("foreign entry about ourselves accepted")
	}
	if tp.self.Version != old {
		t.Fatalf("version moved for an entry below ours: %d -> %d", old, tp.self.Version)
	}
	apply(peerEntry{Name: 1, UID: 99, Version: old, Started: old - 100})
	if tp.self.Version <= old {
		t.Fatalf("self version %d (was %d)", tp.self.Version, old)
	}
	if !tp.selfDirty {
		t.Fatal("self bump not scheduled for broadcast")
	}

	// Hash: two topologies with the same entries have the same hash, whatever the order.
	var s2 []sentMsg
	tp2 := newTestTopo(1, &now, &s2)
	tp2.self.UID, tp2.self.Version = tp.self.UID, tp.self.Version
	tp2.self.hash = tp2.self.digestHash()
	tp2.hash = tp2.self.hash
	tp2.replaceEntry(tp.peers[x])
	if tp2.hash != tp.hash {
		t.Fatalf("hash %x != %x for equal topologies", tp2.hash, tp.hash)
	}
}

// TestSelfClaimNeverWins: gossip claiming our name with another UID (a clone, a forgery) is
// counted and logged, never applied, and our version goes above it, even a forged one far
// ahead (the peers accepted it, so only a version above it takes our entry back).
func TestSelfClaimNeverWins(t *testing.T) {
	now := time.Unix(1000, 0)
	var sent []sentMsg
	tp := newTestTopo(1, &now, &sent)
	started := tp.started
	// Claims to have started before us and to be live: nothing to obey, we just go above.
	e := peerEntry{Name: 1, UID: 42, Version: started + 10, Started: started - 1000}
	e.hash = e.digestHash()
	if tp.apply(&e) {
		t.Fatal("entry claiming our name accepted")
	}
	if tp.self.Version <= e.Version || tp.self.UID == 42 {
		t.Fatalf("self version %d, uid %d after a claim at version %d", tp.self.Version, tp.self.UID, e.Version)
	}
	if tp.stats.SelfClaims != 1 {
		t.Fatalf("self claims counted %d", tp.stats.SelfClaims)
	}
	f := peerEntry{Name: 1, UID: 43, Version: uint64(now.Add(24 * time.Hour).UnixMicro()), Started: started}
	f.hash = f.digestHash()
	if tp.apply(&f) || tp.self.Version <= f.Version || tp.self.UID == 43 {
		t.Fatalf("self version %d, uid %d after a forged claim at version %d", tp.self.Version, tp.self.UID, f.Version)
	}
}

func TestEntryCodecRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	peers := randomGraph(rng, 20, 30)
	var entries []*peerEntry
	for _, e := range peers {
		e.NickName = "nick-" + e.Name.String()
		e.Started = 12345
		e.hash = e.digestHash()
		entries = append(entries, e)
	}
	msgs := encodeUpdate(entries, nil)
	if len(msgs) != 1 {
		t.Fatalf("%d messages", len(msgs))
	}
	got, err := decodeUpdate(msgs[0])
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range got {
		w := entries[i]
		if e.Name != w.Name || e.UID != w.UID || e.Version != w.Version || e.NickName != w.NickName ||
			e.Started != w.Started || !slices.Equal(e.Conns, w.Conns) || e.hash != w.hash {
			t.Fatalf("entry %d: got %+v want %+v", i, e, w)
		}
	}
	// Big updates split into chunks that each decode.
	var big []*peerEntry
	for i := range 3000 {
		e := &peerEntry{Name: PeerName(i + 1), UID: 1, Version: 1, NickName: string(bytes.Repeat([]byte("n"), 200))}
		for j := range 5 {
			e.Conns = append(e.Conns, connSummary{Name: PeerName(j + 1), Addr: "255.255.255.255:65535"})
		}
		big = append(big, e)
	}
	chunks := encodeUpdate(big, []byte{tagTopoUpdate})
	total := 0
	for _, c := range chunks {
		if len(c) > maxUpdateChunk+1024 {
			t.Fatalf("chunk of %d bytes", len(c))
		}
		es, err := decodeUpdate(c[1:])
		if err != nil {
			t.Fatal(err)
		}
		total += len(es)
	}
	if total != len(big) || len(chunks) < 2 {
		t.Fatalf("%d entries in %d chunks", total, len(chunks))
	}
}

func TestDecodersRefuseHostileInput(t *testing.T) {
	cases := map[string][]byte{
		"huge count":      {0xff, 0xff, 0xff, 0xff, 0x0f},
		"truncated entry": {1, 0, 0, 0, 0, 0, 1, 0},
		"zero name":       append([]byte{1}, make([]byte, 30)...),
		"trailing":        append(encodeUpdate([]*peerEntry{{Name: 1, Version: 1}}, nil)[0], 0),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := decodeUpdate(b); err == nil {
				t.Fatal("accepted")
			}
		})
	}
	if _, err := decodeDigest([]byte{0xff, 0xff, 0x03}); err == nil {
		t.Fatal("digest with impossible count accepted")
	}
	if _, _, err := decodeHash([]byte{1, 2}); err == nil {
		t.Fatal("short hash accepted")
	}
}

func TestBackoff(t *testing.T) {
	var d time.Duration
	var seq []time.Duration
	for range 20 {
		d = backoff(d)
		seq = append(seq, d)
	}
	if seq[0] != retryInitial || seq[1] != 3*time.Second || seq[2] != 4500*time.Millisecond {
		t.Fatalf("backoff starts %v", seq[:3])
	}
	if seq[len(seq)-1] != retryMax {
		t.Fatalf("backoff not capped: %v", seq[len(seq)-1])
	}
	for i := 1; i < len(seq); i++ {
		if seq[i] < seq[i-1] {
			t.Fatalf("backoff decreased at %d: %v", i, seq)
		}
	}
	if jitter(10*time.Second, 0) != 5*time.Second || jitter(10*time.Second, 0.999999) >= 15*time.Second {
		t.Fatal("jitter outside [d/2, 3d/2)")
	}
}

func TestNormalizeTarget(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.1":      "10.0.0.1:6783",
		"10.0.0.1:7000": "10.0.0.1:7000",
		"host.example":  "host.example:6783",
		"[fd00::1]":     "[fd00::1]:6783",
		"[fd00::1]:1":   "[fd00::1]:1",
	} {
		got, _, err := normalizeTarget(in, 6783)
		if err != nil || got != want {
			t.Errorf("normalizeTarget(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "a:b", "1.2.3.4:99999", ":80"} {
		if _, _, err := normalizeTarget(bad, 6783); err == nil {
			t.Errorf("normalizeTarget(%q) accepted", bad)
		}
	}
}

func FuzzDecodeTopology(f *testing.F) {
	e := &peerEntry{Name: 1, UID: 2, Version: 3, NickName: "n", Conns: []connSummary{{Name: 2, Addr: "1.2.3.4:5", Outbound: true}}}
	f.Add(encodeUpdate([]*peerEntry{e}, nil)[0])
	f.Add(encodeDigest([]digestItem{{1, 2, 3}}))
	f.Add(encodeNames([]PeerName{1, 2}))
	f.Add(encodeHash(7, 3))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		if es, err := decodeUpdate(b); err == nil && len(es) > 0 {
			// Whatever decodes must re-encode to something that decodes the same.
			again, err := decodeUpdate(encodeUpdate(es, nil)[0])
			if err != nil || len(again) != len(es) {
				t.Fatalf("re-decode: %v", err)
			}
		}
		decodeDigest(b)
		decodeNames(b)
		decodeHash(b)
		// And the state machine never panics on it, whatever the tag.
		now := time.Unix(1, 0)
		var sent []sentMsg
		tp := newTestTopo(9, &now, &sent)
		tp.setConn(connSummary{Name: 1, Established: true})
		for tag := tagTopoUpdate; tag <= tagTopoHash; tag++ {
			tp.handle(1, append([]byte{tag}, b...))
		}
		tp.flush()
		tp.gc()
	})
}

func FuzzGossipMessage(f *testing.F) {
	var w wbuf
	w.u8(tagGossipUnicast)
	w.u8(3)
	w.str8("ch")
	w.name(1)
	w.name(2)
	f.Add(append(w.b, "payload"...))
	f.Add([]byte{tagGossipBroadcast, 2, 'c', 'h', 0, 0, 0, 0, 0, 1})
	f.Add([]byte{tagGossip, 200})
	// A "name in use" notice about us from a neighbour (uid, started, heard, nickname):
	// logged only, never fatal.
	var n wbuf
	n.u8(tagNameInUse)
	n.u64(7)
	n.u64(1)
	n.u64(0)
	n.str8("impostor")
	f.Add(n.b)
	f.Fuzz(func(t *testing.T, b []byte) {
		mn := NewMemNetwork()
		cfg := testConfig(mn, 0)
		cfg.ListenAddr = "-"
		r, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		r.NewGossip("ch", newTestGossiper())
		mc := &meshConn{r: r, intro: remoteIntro{Name: 2}, done: make(chan struct{}), sendq: make(chan []byte, 16)}
		r.dispatch(mc, b)
		r.Close()
	})
}

func ExampleRouter() {
	mn := NewMemNetwork() // in production: leave Transport nil for TCP
	a, _ := New(Config{Name: 0x0a0000000001, NickName: "a", ListenAddr: "10.0.0.1:6783", Transport: mn.Transport("10.0.0.1"), NoMemberlist: true})
	b, _ := New(Config{Name: 0x0a0000000002, NickName: "b", ListenAddr: "10.0.0.2:6783", Transport: mn.Transport("10.0.0.2"), NoMemberlist: true,
		Peers: []string{"10.0.0.1:6783"}})
	routed := make(chan struct{}, 1)
	a.OnRoutesChanged(func() {
		if _, ok := a.UnicastNextHop(b.Name()); ok {
			select {
			case routed <- struct{}{}:
			default:
			}
		}
	})
	a.Start()
	b.Start()
	defer a.Close()
	defer b.Close()
	<-routed
	fmt.Println(a.Peers())
	// Output: [0a:00:00:00:00:01 0a:00:00:00:00:02]
}
