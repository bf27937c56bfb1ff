package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/testutil"
	"github.com/weavemesh/weave/mesh"
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// pumped starts a fake net whose messages are delivered in the background.
func pumped(t *testing.T) *fakeNet {
	n := newFakeNet(1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); n.pump(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return n
}

func TestSinglePeerAllocateClaimRelease(t *testing.T) {
	n := pumped(t)
	a := n.start(t, n.config(1, "consensus", nil))
	defer a.Close()
	if got := a.Status().Status; got != StatusIdle {
		t.Fatalf("status before first allocation %q", got)
	}
	ctx := ctxT(t, 5*time.Second)
	p1, err := a.Allocate(ctx, "c1", "ethwe", netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	if p1 != pfx("10.32.0.1/22") {
		t.Fatalf("first allocation %v", p1)
	}
	if again, _ := a.Allocate(ctx, "c1", "ethwe", netip.Prefix{}); again != p1 {
		t.Fatalf("same container got %v then %v", p1, again)
	}
	p2, _ := a.Allocate(ctx, "c1", "eth1", netip.Prefix{})
	p3, _ := a.Allocate(ctx, "c2", "ethwe", pfx("10.32.1.0/24"))
	if p2 != pfx("10.32.0.2/22") || p3 != pfx("10.32.1.1/24") {
		t.Fatalf("allocations %v %v", p2, p3)
	}
	if _, err := a.Allocate(ctx, "c3", "ethwe", pfx("10.99.0.0/24")); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("subnet outside range: %v", err)
	}
	if _, err := a.Allocate(ctx, "", "ethwe", netip.Prefix{}); !errors.Is(err, ErrBadArgument) {
		t.Fatalf("empty id: %v", err)
	}
	// Exact claims: a restarted container keeps its address; a taken one is refused.
	if err := a.Claim(ctx, "c4", "ethwe", pfx("10.32.2.7/22")); err != nil {
		t.Fatal(err)
	}
	if err := a.Claim(ctx, "c5", "ethwe", pfx("10.32.2.7/22")); !errors.Is(err, ErrAddressInUse) {
		t.Fatalf("claim of a used address: %v", err)
	}
	if err := a.Claim(ctx, "c4", "ethwe", pfx("10.32.2.7/22")); err != nil {
		t.Fatalf("claim repeated by its owner: %v", err)
	}
	if err := a.Claim(ctx, "c6", "ethwe", pfx("192.168.9.9/24")); err != nil {
		t.Fatalf("claim outside the range: %v", err)
	}
	if got := a.Lookup("c4", "ethwe"); len(got) != 1 || got[0] != pfx("10.32.2.7/22") {
		t.Fatalf("lookup %v", got)
	}
	if n, err := a.Release("c1", "ethwe"); n != 1 || err != nil {
		t.Fatalf("release: %d %v", n, err)
	}
	if p, _ := a.Allocate(ctx, "c7", "ethwe", netip.Prefix{}); p != p1 {
		t.Fatalf("released address not reused: %v", p)
	}
	if n, _ := a.ReleaseAll("c1"); n != 1 {
		t.Fatalf("release all of c1 freed %d", n)
	}
	st := a.Status()
	if st.Status != StatusReady || st.Counts.LocalUsed != 4 || st.Counts.MaxIPs != 1024 || len(st.Owners) != 1 || st.Owners[0].Percent != 100 {
		t.Fatalf("status %+v", st)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal("second close:", err)
	}
	if _, err := a.Allocate(ctx, "x", "y", netip.Prefix{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("allocate after close: %v", err)
	}
}

func TestConsensusWaitsVisiblyThenSplits(t *testing.T) {
	n := pumped(t)
	a := n.start(t, n.config(1, "consensus=3", nil))
	defer a.Close()
	// Alone, a cannot reach a quorum of 2: the request waits and says why.
	short, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	errc := make(chan error, 1)
	go func() { _, err := a.Allocate(short, "c1", "ethwe", netip.Prefix{}); errc <- err }()
	testutil.Eventually(t, 5*time.Second, "pending allocation", func() error {
		st := a.Status()
		if st.Status != StatusAwaitingConsensus || st.Counts.Pending != 1 {
			return errors.New(st.Status)
		}
		return nil
	})
	if err := <-errc; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("allocation without quorum: %v", err)
	}
	cancel()
	b := n.start(t, n.config(2, "consensus=3", nil))
	defer b.Close()
	obs := n.start(t, n.config(3, "observer", nil))
	defer obs.Close()
	ctx := ctxT(t, 10*time.Second)
	// a keeps proposing on its ticks; drive them until b's vote lands.
	var pa netip.Prefix
	testutil.Eventually(t, 10*time.Second, "consensus", func() error {
		n.advance(time.Minute)
		a.Tick()
		b.Tick()
		c, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		var err error
		pa, err = a.Allocate(c, "c1", "ethwe", netip.Prefix{})
		return err
	})
	pb, err := b.Allocate(ctx, "c1", "ethwe", netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	if pa == pb {
		t.Fatalf("both peers allocated %v", pa)
	}
	testutil.Eventually(t, 5*time.Second, "observer sees the ring", func() error {
		if !obs.Ready() {
			return errors.New("not ready")
		}
		return nil
	})
	sa, sb, so := a.Status(), b.Status(), obs.Status()
	shape := func(r Report) (out []string) {
		for _, e := range r.Entries {
			out = append(out, e.Token+"/"+e.Peer)
		}
		return out
	}
	if len(sa.Owners) != 2 || !slices.Equal(shape(sa), shape(sb)) || !slices.Equal(shape(sa), shape(so)) {
		t.Fatalf("rings differ or wrong owners:\n%+v\n%+v\n%+v", sa, sb, so)
	}
	for _, o := range sa.Owners {
		if o.Peer == mesh.PeerName(3).String() {
			t.Fatal("observer owns space")
		}
	}
	if _, err := obs.Allocate(ctx, "c", "ethwe", netip.Prefix{}); !errors.Is(err, ErrObserver) {
		t.Fatalf("observer allocated: %v", err)
	}
}

func TestDonationWhenOutOfSpace(t *testing.T) {
	n := pumped(t)
	seed := "seed=" + mesh.PeerName(1).String()
	a := n.start(t, n.config(1, seed, nil))
	defer a.Close()
	b := n.start(t, n.config(2, seed, nil))
	defer b.Close()
	ctx := ctxT(t, 10*time.Second)
	if st := b.Status(); st.Status != StatusReady || st.Counts.LocalOwned != 0 {
		t.Fatalf("b before donation: %+v", st)
	}
	seen := map[netip.Addr]string{}
	for i := range 40 {
		for _, x := range []*Allocator{a, b} {
			id := string(rune('a'+i%26)) + x.cfg.NickName + string(rune('0'+i/26))
			p, err := x.Allocate(ctx, id, "ethwe", netip.Prefix{})
			if err != nil {
				t.Fatal(err)
			}
			if prev, dup := seen[p.Addr()]; dup {
				t.Fatalf("%v handed out twice (%s and %s)", p, prev, id)
			}
			seen[p.Addr()] = id
		}
	}
	owned := b.Status().Counts.LocalOwned
	if owned == 0 || owned&(owned-1) != 0 {
		t.Fatalf("b owns %d addresses; want a CIDR-aligned donation", owned)
	}
}

func TestSubnetDonationAndExhaustion(t *testing.T) {
	n := pumped(t)
	seed := "seed=" + mesh.PeerName(1).String()
	a := n.start(t, n.config(1, seed, nil))
	defer a.Close()
	b := n.start(t, n.config(2, seed, nil))
	defer b.Close()
	ctx := ctxT(t, 10*time.Second)
	sub := pfx("10.32.3.0/29") // 6 usable addresses
	got := map[netip.Addr]bool{}
	for i := range 6 {
		x := []*Allocator{a, b}[i%2]
		p, err := x.Allocate(ctx, string(rune('a'+i)), "ethwe", sub)
		if err != nil {
			t.Fatal(err)
		}
		if !sub.Contains(p.Addr()) || p.Bits() != 29 || got[p.Addr()] {
			t.Fatalf("allocation %v", p)
		}
		got[p.Addr()] = true
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if p, err := b.Allocate(short, "z", "ethwe", sub); err == nil {
		t.Fatalf("allocated %v from a full subnet", p)
	}
}

func TestSeedMismatchIsRefusedNotFatal(t *testing.T) {
	n := newFakeNet(2)
	a := n.start(t, n.config(1, "seed="+mesh.PeerName(1).String(), nil))
	defer a.Close()
	b := n.start(t, n.config(2, "seed="+mesh.PeerName(2).String(), nil))
	defer b.Close()
	n.gossipRound()
	// The errors a gossiper returns are what would make a mesh drop a connection: none.
	for n.deliverOne(true) {
	}
	d := b.Gossip()
	if _, err := a.OnGossip(d.Encode()[0]); err != nil {
		t.Fatalf("mismatched ring returned an error to the mesh: %v", err)
	}
	st := a.Status()
	if !strings.Contains(st.Error, "seeded by different peers") || !strings.Contains(st.Error, "remove ipam.db") {
		t.Fatalf("no clear message: %q", st.Error)
	}
	if strings.Contains(st.Error, "ForgetRing") { // no API or CLI verb exposes it
		t.Errorf("the repair names a call users cannot make: %q", st.Error)
	}
	if st.Counts.RejectedUpdates == 0 {
		t.Fatal("rejection not counted")
	}
	if _, err := a.Allocate(ctxT(t, time.Second), "c", "ethwe", netip.Prefix{}); err != nil {
		t.Fatalf("a stopped working after refusing b's ring: %v", err)
	}
	if len(a.Status().Owners) != 1 {
		t.Fatal("a merged b's ring")
	}
}

func TestRemovePeerTakesOverDeadSpace(t *testing.T) {
	n := pumped(t)
	init := "seed=" + mesh.PeerName(1).String() + "," + mesh.PeerName(2).String() + "," + mesh.PeerName(3).String()
	a := n.start(t, n.config(1, init, nil))
	defer a.Close()
	b := n.start(t, n.config(2, init, nil))
	defer b.Close()
	c := n.start(t, n.config(3, init, nil))
	if _, err := a.RemovePeer(3); !errors.Is(err, ErrPeerReachable) {
		t.Fatalf("removing a live peer: %v", err)
	}
	n.stop(3)
	_ = c
	if st := a.Status(); st.Counts.UnreachablePeers != 1 || st.Counts.UnreachableAddresses != 256 {
		t.Fatalf("unreachable counts %+v", st.Counts)
	}
	p, err := a.ResolvePeer("h3")
	if err != nil || p != 3 {
		t.Fatalf("resolve nickname: %v %v", p, err)
	}
	taken, err := a.RemovePeer(p)
	if err != nil || taken != 256 {
		t.Fatalf("rmpeer: %d %v", taken, err)
	}
	testutil.Eventually(t, 5*time.Second, "b learns the takeover", func() error {
		for _, o := range b.Status().Owners {
			if o.Peer == mesh.PeerName(3).String() {
				return errors.New("peer 3 still owns space in b's ring")
			}
		}
		return nil
	})
	if st := a.Status(); st.Counts.LocalOwned != 768 || st.Counts.UnreachablePeers != 0 {
		t.Fatalf("a after rmpeer: %+v", st.Counts)
	}
}

func TestHandoverGivesSpaceToLivePeer(t *testing.T) {
	n := pumped(t)
	init := "seed=" + mesh.PeerName(1).String() + "," + mesh.PeerName(2).String()
	a := n.start(t, n.config(1, init, nil))
	defer a.Close()
	b := n.start(t, n.config(2, init, nil))
	defer b.Close()
	if _, err := a.Allocate(ctxT(t, time.Second), "c", "ethwe", netip.Prefix{}); err != nil {
		t.Fatal(err)
	}
	heir, err := a.Handover()
	if err != nil || heir != 2 {
		t.Fatalf("handover: %v %v", heir, err)
	}
	if len(a.Owned()) != 0 {
		t.Fatal("allocations kept after handover")
	}
	testutil.Eventually(t, 5*time.Second, "b owns everything", func() error {
		if got := b.Status().Counts.LocalOwned; got != 1024 {
			return errors.New("not yet")
		}
		return nil
	})
}

func TestFailedCommitHandsNothingOut(t *testing.T) {
	n := pumped(t)
	st := &MemStore{}
	a := n.start(t, n.config(1, "consensus", st))
	defer a.Close()
	a.Prime()
	st.FailCommits = errors.New("disk full")
	if p, err := a.Allocate(ctxT(t, time.Second), "c", "ethwe", netip.Prefix{}); err == nil {
		t.Fatalf("allocated %v without saving it", p)
	}
	if len(a.Owned()) != 0 {
		t.Fatal("unsaved allocation kept")
	}
	st.FailCommits = nil
	p, err := a.Allocate(ctxT(t, time.Second), "c", "ethwe", netip.Prefix{})
	if err != nil || p != pfx("10.32.0.1/22") {
		t.Fatalf("after recovery: %v %v", p, err)
	}
	if a.Counts().PersistErrors == 0 {
		t.Fatal("persist error not counted")
	}
}

func TestConfigValidation(t *testing.T) {
	for _, init := range []string{"consensus=0", "consensus=x", "seed=", "seed=zz", "bogus"} {
		if _, err := New(Config{Name: 1, Init: init, TickInterval: -1}); !errors.Is(err, ErrBadInit) {
			t.Errorf("init %q: %v", init, err)
		}
	}
	if _, err := New(Config{Name: 1, Range: pfx("fd00::/64"), TickInterval: -1}); err == nil {
		t.Error("IPv6 range accepted")
	}
	if _, err := New(Config{Name: 1, DefaultSubnet: pfx("10.0.0.0/24"), TickInterval: -1}); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("default subnet outside range: %v", err)
	}
	if _, err := New(Config{TickInterval: -1}); !errors.Is(err, ErrBadArgument) {
		t.Errorf("no name: %v", err)
	}
	a, err := New(Config{Name: 1, TickInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if a.Status().Range != "10.32.0.0/12" || a.Status().DefaultSubnet != "10.32.0.0/12" {
		t.Fatalf("defaults %+v", a.Status())
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
}

// The repair for two rings seeded apart: one side forgets its ring, adopts the other, keeps
// the addresses nobody else uses and reports the one that clashes. A restart in between
// does not bring the forgotten ring back.
func TestForgetRingRepairsSeedMismatch(t *testing.T) {
	n := pumped(t)
	a := n.start(t, n.config(1, "seed="+mesh.PeerName(1).String(), nil))
	defer a.Close()
	bStore := &MemStore{}
	b := n.start(t, n.config(2, "seed="+mesh.PeerName(2).String(), bStore))
	ctx := ctxT(t, 5*time.Second)
	pa, _ := a.Allocate(ctx, "a1", "ethwe", netip.Prefix{})
	pb1, _ := b.Allocate(ctx, "b1", "ethwe", netip.Prefix{})
	pb2, _ := b.Allocate(ctx, "b2", "ethwe", netip.Prefix{})
	if pa != pb1 {
		t.Fatalf("setup: separate rings should both start at the bottom: %v %v", pa, pb1)
	}
	if err := b.ForgetRing(); err != nil {
		t.Fatal(err)
	}
	b.Close()
	b = n.start(t, n.config(2, "seed="+mesh.PeerName(2).String(), bStore))
	defer b.Close()
	if b.Ready() {
		t.Fatal("restart re-seeded the forgotten ring")
	}
	n.gossipRound()
	testutil.Eventually(t, 5*time.Second, "b adopts a's ring and re-claims", func() error {
		st := b.Status()
		if len(st.Conflicts) != 1 || !strings.Contains(st.Conflicts[0], pb1.Addr().String()) {
			return fmt.Errorf("conflicts %v", st.Conflicts)
		}
		if st.Counts.LocalOwned != 1 || st.Error != "" {
			return fmt.Errorf("b owns %d, error %q", st.Counts.LocalOwned, st.Error)
		}
		return nil
	})
	if got := b.Lookup("b2", "ethwe"); len(got) != 1 || got[0] != pb2 {
		t.Fatalf("b lost b2: %v", got)
	}
	n.advance(time.Minute) // the old refusal ages out of the report
	if st := a.Status(); st.Error != "" || len(st.Owners) != 2 {
		t.Fatalf("a after repair: %+v", st)
	}
}

// With a real ticker (and the real clock), retries happen by themselves: a proposer that was
// alone re-proposes once its peer is up, and the waiting request completes; Close stops it.
func TestTickerDrivesRetries(t *testing.T) {
	n := pumped(t)
	mk := func(p mesh.PeerName) Config {
		c := n.config(p, "consensus=2", nil)
		c.TickInterval = 20 * time.Millisecond
		c.Now = nil
		return c
	}
	a := n.start(t, mk(1))
	defer a.Close()
	errc := make(chan error, 1)
	go func() {
		_, err := a.Allocate(ctxT(t, 10*time.Second), "c", "ethwe", netip.Prefix{})
		errc <- err
	}()
	testutil.Eventually(t, 5*time.Second, "a proposing", func() error {
		if a.Status().Status != StatusAwaitingConsensus {
			return errors.New(a.Status().Status)
		}
		return nil
	})
	b := n.start(t, mk(2))
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
}

// Claiming an address in another peer's space asks that peer: a free one is handed over,
// one in use there is refused.
func TestClaimFromAnotherPeersSpace(t *testing.T) {
	n := pumped(t)
	init := "seed=" + mesh.PeerName(1).String() + "," + mesh.PeerName(2).String()
	a := n.start(t, n.config(1, init, nil))
	defer a.Close()
	b := n.start(t, n.config(2, init, nil))
	defer b.Close()
	ctx := ctxT(t, 5*time.Second)
	used, err := b.Allocate(ctx, "on-b", "ethwe", netip.Prefix{}) // 10.32.2.0, bottom of b's half
	if err != nil {
		t.Fatal(err)
	}
	want := pfx("10.32.3.77/22")
	if err := a.Claim(ctx, "moved", "ethwe", want); err != nil {
		t.Fatalf("claim of a free address in b's space: %v", err)
	}
	if got := a.Lookup("moved", "ethwe"); len(got) != 1 || got[0] != want {
		t.Fatalf("lookup after claim: %v", got)
	}
	testutil.Eventually(t, 5*time.Second, "b sees the grant", func() error {
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.ring.Owner(mustAddr(want.Addr())) != 1 {
			return errors.New("b still owns it")
		}
		return nil
	})
	if err := a.Claim(ctx, "clash", "ethwe", used); !errors.Is(err, ErrAddressInUse) {
		t.Fatalf("claim of an address b uses: %v", err)
	}
	if p, _ := b.Allocate(ctx, "next", "ethwe", pfx("10.32.3.64/26")); p.Addr() == want.Addr() {
		t.Fatalf("b handed out the address it gave away: %v", p)
	}
}
