package ipam

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/testutil"
	"github.com/weavemesh/weave/mesh"
)

// holdings maps every address the allocators hold to "peer/container".
func holdings(t *testing.T, as map[mesh.PeerName]*Allocator) map[netip.Addr]string {
	t.Helper()
	out := map[netip.Addr]string{}
	for _, p := range slices.Sorted(maps.Keys(as)) {
		for k, ps := range as[p].Owned() {
			for _, pf := range ps {
				who := fmt.Sprintf("%v/%v", p, k)
				if other, dup := out[pf.Addr()]; dup {
					t.Errorf("address %v held twice: %s and %s", pf.Addr(), other, who)
				}
				out[pf.Addr()] = who
			}
		}
	}
	return out
}

// TestLostDatabaseRejoinsRing is scenario 5 of the hardening issue: a peer whose ipam.db was
// deleted or emptied, relaunched without peer arguments, must adopt the ring its peers hold
// (never bootstrap one of its own with a quorum of one), keep the addresses its host's
// containers still use, and hand out no address another peer's container holds.
func TestLostDatabaseRejoinsRing(t *testing.T) {
	for _, loss := range []string{"deleted", "emptied"} {
		t.Run(loss, func(t *testing.T) {
			n := pumped(t)
			dir := t.TempDir()
			mk := func(p mesh.PeerName, initialPeers int, inUse map[Key][]netip.Prefix) Config {
				c := n.config(p, "consensus", nil)
				c.InitialPeerCount = initialPeers // h1 alone, h2 with h1, h3 with h1 and h2
				c.DBPath = filepath.Join(dir, fmt.Sprintf("ipam-%d.db", p))
				c.MemberPath = filepath.Join(dir, fmt.Sprintf("member-%d", p))
				c.InUse = inUse
				return c
			}
			nodes := map[mesh.PeerName]*Allocator{}
			for p := mesh.PeerName(1); p <= 3; p++ {
				nodes[p] = n.start(t, mk(p, int(p), nil))
				defer func() { nodes[p].Close() }()
			}
			ctx := ctxT(t, 20*time.Second)
			bAddrs := map[Key]netip.Prefix{}
			for p := mesh.PeerName(1); p <= 3; p++ {
				for i := range 4 {
					k := Key{fmt.Sprintf("c%d-%d", p, i), "ethwe"}
					got, err := nodes[p].Allocate(ctx, k.ID, k.Iface, netip.Prefix{})
					if err != nil {
						t.Fatalf("peer %v: %v", p, err)
					}
					if p == 2 {
						bAddrs[k] = got
					}
				}
			}
			holdings(t, nodes)
			if own := ownersOf(nodes[1].Status()); len(own) != 3 {
				t.Fatalf("ring owners before the loss: %v", own)
			}

			// Stop peer 2 and lose its database; two of its containers still run on its host.
			n.stop(2)
			db := filepath.Join(dir, "ipam-2.db")
			var err error
			if loss == "deleted" {
				err = os.Remove(db)
			} else {
				err = os.Truncate(db, 0)
			}
			if err != nil {
				t.Fatal(err)
			}
			kept := map[Key][]netip.Prefix{}
			for _, id := range []string{"c2-0", "c2-2"} {
				k := Key{id, "ethwe"}
				kept[k] = []netip.Prefix{bAddrs[k]}
			}
			// Cut off from its peers at first, so we can watch it wait.
			n.setCut(2, 1, true)
			n.setCut(2, 3, true)
			b := n.start(t, mk(2, 1, kept)) // relaunched without peer arguments
			nodes[2] = b
			short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
			errc := make(chan error, 1)
			go func() { _, err := b.Allocate(short, "new-0", "ethwe", netip.Prefix{}); errc <- err }()
			testutil.Eventually(t, 5*time.Second, "relaunched peer waits for the ring, visibly", func() error {
				st := b.Status()
				if st.Status != StatusAwaitingRing || st.Counts.Pending != 1 {
					return fmt.Errorf("status %q, pending %d", st.Status, st.Counts.Pending)
				}
				return nil
			})
			if err := <-errc; !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("allocation before the ring is known: %v (want a timeout, not a ring of its own)", err)
			}
			cancel()
			if b.Ready() {
				t.Fatal("relaunched peer made a ring of its own")
			}

			n.healAll()
			b.Tick() // asks its peers for their ring
			for i := range 6 {
				k := Key{fmt.Sprintf("new-%d", i), "ethwe"}
				if _, err := b.Allocate(ctx, k.ID, k.Iface, netip.Prefix{}); err != nil {
					t.Fatalf("allocate on the relaunched peer: %v", err)
				}
			}
			for i := range 3 {
				if _, err := nodes[1].Allocate(ctx, fmt.Sprintf("more-%d", i), "ethwe", netip.Prefix{}); err != nil {
					t.Fatal(err)
				}
			}
			held := holdings(t, nodes)
			for k, ps := range kept {
				if got := b.Lookup(k.ID, k.Iface); !slices.Equal(got, ps) {
					t.Errorf("container %v still on the host lost its address %v (has %v)", k, ps, got)
				}
				if who := held[ps[0].Addr()]; who != fmt.Sprintf("%v/%v", mesh.PeerName(2), k) {
					t.Errorf("%v of %v is held by %q", ps[0], k, who)
				}
			}
			for p, a := range nodes {
				st := a.Status()
				if st.Error != "" {
					t.Errorf("peer %v refused a ring: %s", p, st.Error)
				}
				if want := map[bool]uint64{true: 2}[p == 2]; st.Counts.Restored != want {
					t.Errorf("peer %v restored %d addresses in use, want %d", p, st.Counts.Restored, want)
				}
				for _, o := range st.Owners {
					if o.Percent >= 100 {
						t.Errorf("peer %v sees %s owning the whole range", p, o.Peer)
					}
				}
			}
			if own := ownersOf(b.Status()); len(own) != 3 {
				t.Errorf("relaunched peer's ring owners: %v", own)
			}
		})
	}
}

func ownersOf(r Report) []string {
	var out []string
	for _, o := range r.Owners {
		out = append(out, o.Peer)
	}
	return out
}

// countingPeers is the fake net's peer view that also tells how many peers it sees.
type countingPeers struct {
	fakePeers
}

func (c countingPeers) NumPeers() int { return len(c.n.others(c.self)) + 1 }

// TestConsensusCountsPeersTheMeshKnows: a peer without any record of a ring (database and
// membership record gone) and without targets still must not agree with itself alone while
// the mesh shows it other peers: it waits for a majority and so learns their ring.
func TestConsensusCountsPeersTheMeshKnows(t *testing.T) {
	n := pumped(t)
	a := n.start(t, n.config(1, "consensus", nil))
	defer a.Close()
	c := n.start(t, n.config(3, "seed="+mesh.PeerName(1).String(), nil)) // joins a's ring
	defer c.Close()
	ctx := ctxT(t, 10*time.Second)
	pa, err := a.Allocate(ctx, "a0", "ethwe", netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := n.config(2, "consensus", nil) // InitialPeerCount 0: quorum 1 on its own
	cfg.Peers = countingPeers{fakePeers{n, 2}}
	b := n.start(t, cfg)
	defer b.Close()
	n.gossipRound() // as a new mesh connection would
	pb, err := b.Allocate(ctx, "b0", "ethwe", netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	if pa == pb {
		t.Fatalf("both peers hold %v", pa)
	}
	for _, x := range []*Allocator{a, b} {
		st := x.Status()
		if st.Error != "" {
			t.Fatalf("ring refused: %s", st.Error)
		}
		if len(st.Owners) != 2 || slices.ContainsFunc(st.Owners, func(o OwnerStatus) bool { return o.Percent >= 100 }) {
			t.Fatalf("owners %+v", st.Owners)
		}
	}
}

// TestMembershipRecord: the record follows the ring's owners, a corrupt one makes the peer
// wait (never guess), and a record of only ourselves or of another range lets a fresh start
// bootstrap as usual.
func TestMembershipRecord(t *testing.T) {
	dir := t.TempDir()
	n := newFakeNet(3)
	path := filepath.Join(dir, "member")
	cfg := n.config(1, "seed="+mesh.PeerName(1).String()+","+mesh.PeerName(2).String(), nil)
	cfg.MemberPath = path
	a := n.start(t, cfg)
	a.Close()
	m, ok, err := readMemberRecord(path)
	if err != nil || !ok || m.rng != cfg.Range || !slices.Equal(m.owners, []mesh.PeerName{1, 2}) {
		t.Fatalf("record %+v %v %v", m, ok, err)
	}

	start := func(t *testing.T, content string) *Allocator {
		t.Helper()
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		c := n.config(1, "consensus", nil)
		c.MemberPath = path
		a, err := New(c)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
		return a
	}
	for name, content := range map[string]string{
		"corrupt":   "range 10.32.0.0/22\nowner not-a-name\n",
		"truncated": "ran",
		"others":    "range 10.32.0.0/22\nowner " + mesh.PeerName(2).String() + "\n",
	} {
		t.Run(name, func(t *testing.T) {
			a := start(t, content)
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			if _, err := a.Allocate(ctx, "x", "ethwe", netip.Prefix{}); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("allocated (%v) with a record saying we belonged to a ring", err)
			}
			st := a.Status()
			if st.Status != StatusAwaitingRing {
				t.Fatalf("status %q", st.Status)
			}
			if bad := st.Counts.BadMemberRecords; (name == "others") != (bad == 0) {
				t.Fatalf("%d bad membership records counted", bad)
			}
		})
	}
	for name, content := range map[string]string{
		"only us":       "range 10.32.0.0/22\nowner " + mesh.PeerName(1).String() + "\n",
		"another range": "range 10.99.0.0/16\nowner " + mesh.PeerName(2).String() + "\n",
	} {
		t.Run(name, func(t *testing.T) {
			a := start(t, content)
			if _, err := a.Allocate(ctxT(t, 5*time.Second), "x", "ethwe", netip.Prefix{}); err != nil {
				t.Fatal(err)
			}
			if b, _ := os.ReadFile(path); !strings.Contains(string(b), "range 10.32.0.0/22\nowner "+mesh.PeerName(1).String()+"\n") {
				t.Fatalf("record not rewritten for the new ring:\n%s", b)
			}
		})
	}
}

func FuzzMemberRecord(f *testing.F) {
	f.Add([]byte(memberRecord{rng: DefaultRange, owners: []mesh.PeerName{1, 2}}.encode()))
	f.Add([]byte("range 10.32.0.0/12\n"))
	f.Add([]byte("owner 00:00:00:00:00:01\nrange ::/0\n"))
	f.Add([]byte("range\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseMemberRecord(b)
		if err != nil {
			if !errors.Is(err, ErrBadMemberRecord) {
				t.Fatalf("unwrapped error %v", err)
			}
			return
		}
		again, err := parseMemberRecord(m.encode())
		if err != nil || again.rng != m.rng || !slices.Equal(again.owners, m.owners) {
			t.Fatalf("round trip: %+v -> %+v (%v)", m, again, err)
		}
	})
}

// TestRejoinWaitsForEveryOwnersRing: the first ring a peer hears after losing its database
// may lack a grant it made before the loss (here: an address its peer 3 claimed while peer
// 1 was cut off). It must hear the other owners before it allocates, or it would hand that
// address out a second time.
func TestRejoinWaitsForEveryOwnersRing(t *testing.T) {
	n := newFakeNet(7)
	dir := t.TempDir()
	init := "seed=" + mesh.PeerName(1).String() + "," + mesh.PeerName(2).String() + "," + mesh.PeerName(3).String()
	mk := func(p mesh.PeerName) Config {
		c := n.config(p, init, &MemStore{})
		c.MemberPath = filepath.Join(dir, p.String())
		return c
	}
	a := n.start(t, mk(1))
	defer a.Close()
	b := n.start(t, mk(2))
	c := n.start(t, mk(3))
	defer c.Close()
	n.flush(t, true)

	b.mu.Lock()
	ad := b.ring.OwnedBy(2)[0].Start
	b.mu.Unlock()
	granted := netip.PrefixFrom(ad.Netip(), 22)
	n.setCut(1, 2, true)
	n.setCut(1, 3, true)
	errc := make(chan error, 1)
	go func() { errc <- c.Claim(ctxT(t, 5*time.Second), "cx", "ethwe", granted) }()
	testutil.Eventually(t, 5*time.Second, "peer 2 grants the claimed address to peer 3", func() error {
		n.flush(t, true)
		select {
		case err := <-errc:
			if err != nil {
				t.Fatal(err)
			}
			return nil
		default:
			return errors.New("claim pending")
		}
	})
	n.healAll()

	n.stop(2)
	b = n.start(t, mk(2)) // a new, empty store: the database is lost
	defer func() { b.Close() }()
	for !b.Ready() {
		if !n.deliverOne(true) {
			t.Fatal("the relaunched peer never heard a ring")
		}
	}
	b.mu.Lock()
	stale := b.space.Owns(ad)
	b.mu.Unlock()
	if !stale {
		t.Fatal("the first ring heard already has the grant: the test tests nothing")
	}
	if p, _, done, err := b.tryAllocate(Key{"bx", "ethwe"}, b.cfg.DefaultSubnet, b.cfg.subnet); done {
		t.Fatalf("allocated %v (%v) before hearing every owner's ring; peer 3 holds %v", p, err, granted)
	}
	n.flush(t, true)
	// Peer 3 answered peer 2's ring broadcast of the grant a moment ago, so it waits a tick
	// before it answers again; at the next tick peer 2 asks again.
	n.advance(6 * time.Second)
	b.Tick()
	n.flush(t, true)
	b.mu.Lock()
	owns := b.space.Owns(ad)
	b.mu.Unlock()
	if owns {
		t.Fatal("peer 2 still believes it owns the address it granted")
	}
	p, err := b.Allocate(ctxT(t, 5*time.Second), "bx", "ethwe", netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Addr() == granted.Addr() {
		t.Fatalf("%v handed out again; peer 3 holds it", p)
	}
}
