package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/testutil"
	"github.com/weavemesh/weave/ipam/addr"
	"github.com/weavemesh/weave/mesh"
)

func TestReclaimAfterDeathAndComeback(t *testing.T) {
	n := pumped(t)
	init := "seed=" + mesh.PeerName(1).String() + "," + mesh.PeerName(2).String() + "," + mesh.PeerName(3).String()
	mk := func(p mesh.PeerName, st Store) Config {
		c := n.config(p, init, st)
		c.ReclaimAfter = time.Minute
		return c
	}
	a := n.start(t, mk(1, nil))
	defer a.Close()
	b := n.start(t, mk(2, nil))
	defer b.Close()
	cStore := &MemStore{}
	c := n.start(t, mk(3, cStore))
	ctx := ctxT(t, 5*time.Second)
	x, err := c.Allocate(ctx, "cx", "ethwe", netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	y, _ := c.Allocate(ctx, "cy", "ethwe", netip.Prefix{})
	if x.Addr() != netip.MustParseAddr("10.32.3.0") || y.Addr() != netip.MustParseAddr("10.32.3.1") {
		t.Fatalf("c allocated %v %v", x, y)
	}
	n.stop(3)

	n.advance(30 * time.Second)
	a.Tick()
	b.Tick()
	if st := a.Status(); st.Counts.Reclaimed != 0 || st.Counts.UnreachablePeers != 1 {
		t.Fatalf("reclaimed too early: %+v", st.Counts)
	}
	n.advance(time.Minute)
	b.Tick() // not the designated reclaimer (a has the lower name)
	if b.Status().Counts.Reclaimed != 0 {
		t.Fatal("b reclaimed although a is alive with a lower name")
	}
	a.Tick()
	if got := a.Status().Counts.Reclaimed; got != 256 {
		t.Fatalf("a reclaimed %d addresses", got)
	}
	testutil.Eventually(t, 5*time.Second, "b sees the reclaim", func() error {
		if b.Status().Counts.UnreachablePeers != 0 {
			return errors.New("peer 3 still owns space")
		}
		return nil
	})
	// a hands out c's x to its own container before c comes back.
	if err := a.Claim(ctx, "ax", "ethwe", x); err != nil {
		t.Fatal(err)
	}

	c2 := n.start(t, mk(3, cStore))
	defer c2.Close()
	n.gossipRound() // periodic gossip tells c its space is gone
	testutil.Eventually(t, 5*time.Second, "c re-claims y and reports x", func() error {
		st := c2.Status()
		if len(st.Conflicts) != 1 || !strings.Contains(st.Conflicts[0], x.Addr().String()) {
			return fmt.Errorf("conflicts %v", st.Conflicts)
		}
		if st.Counts.LocalOwned != 1 {
			return fmt.Errorf("c owns %d addresses, want only y", st.Counts.LocalOwned)
		}
		return nil
	})
	yAddr := y.Addr()
	for _, al := range []*Allocator{a, b, c2} {
		al.mu.Lock()
		owner := al.ring.Owner(mustAddr(yAddr))
		xo := al.ring.Owner(mustAddr(x.Addr()))
		al.mu.Unlock()
		if owner != 3 && al == c2 {
			t.Fatalf("c does not own y again in its ring (owner %v)", owner)
		}
		if xo != 1 && al == a {
			t.Fatalf("x changed owner on a: %v", xo)
		}
	}
	if got := c2.Lookup("cy", "ethwe"); len(got) != 1 || got[0] != y {
		t.Fatalf("c lost y: %v", got)
	}
	// New allocations on either side never hit x or y.
	for i := range 20 {
		for _, al := range []*Allocator{a, c2} {
			p, err := al.Allocate(ctx, fmt.Sprintf("n%d-%s", i, al.cfg.NickName), "ethwe", netip.Prefix{})
			if err != nil {
				t.Fatal(err)
			}
			if p.Addr() == x.Addr() || p.Addr() == y.Addr() {
				t.Fatalf("%s handed out %v again", al.cfg.NickName, p)
			}
		}
	}
	// Releasing the conflicting address on c clears the report.
	if _, err := c2.Release("cx", "ethwe"); err != nil {
		t.Fatal(err)
	}
	if st := c2.Status(); len(st.Conflicts) != 0 {
		t.Fatalf("conflict still reported after release: %v", st.Conflicts)
	}
}

func mustAddr(ip netip.Addr) addr.Addr {
	v, ok := addr.FromNetip(ip)
	if !ok {
		panic(ip)
	}
	return v
}

// A peer restarting with a saved ring that names others asks for the ring before handing out
// anything new: after an rmpeer while it was away, it must not reuse the space it lost.
func TestRestartedPeerSyncsBeforeAllocating(t *testing.T) {
	n := pumped(t)
	init := "seed=" + mesh.PeerName(1).String() + "," + mesh.PeerName(2).String()
	a := n.start(t, n.config(1, init, nil))
	defer a.Close()
	bStore := &MemStore{}
	b := n.start(t, n.config(2, init, bStore))
	ctx := ctxT(t, 5*time.Second)
	x, err := b.Allocate(ctx, "bx", "ethwe", netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	n.stop(2)
	if _, err := a.RemovePeer(2); err != nil {
		t.Fatal(err)
	}
	// The address b would hand out next from its old space now serves one of a's containers.
	next := netip.PrefixFrom(x.Addr().Next(), x.Bits())
	if err := a.Claim(ctx, "ax", "ethwe", next); err != nil {
		t.Fatal(err)
	}
	b2 := n.start(t, n.config(2, init, bStore))
	defer b2.Close()
	p, err := b2.Allocate(ctx, "by", "ethwe", netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	if p == next {
		t.Fatalf("restarted peer handed out %v, which it lost while away", p)
	}
	testutil.Eventually(t, 5*time.Second, "b re-claims x", func() error {
		b2.mu.Lock()
		defer b2.mu.Unlock()
		if !b2.space.Owns(mustAddr(x.Addr())) {
			return errors.New("x not owned yet")
		}
		return nil
	})
	if st := b2.Status(); len(st.Conflicts) != 0 {
		t.Fatalf("unexpected conflicts: %v", st.Conflicts)
	}
}
