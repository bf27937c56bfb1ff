package ring

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/weavemesh/weave/ipam/addr"
	"github.com/weavemesh/weave/mesh"
)

// The reference model is one owner per address. Each replica is one peer's view; a peer only
// grants what its own view says it owns, as the allocator does, so the model stays the truth.
func TestDifferentialAgainstOwnerArray(t *testing.T) {
	for seed := uint64(1); seed <= 30; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { runDifferential(t, seed) })
	}
}

func runDifferential(t *testing.T, seed uint64) {
	rnd := rand.New(rand.NewPCG(seed, 7))
	small := addr.Range{Start: 1000, End: 1000 + 256}
	const n = 5
	peers := []mesh.PeerName{1, 2, 3, 4, 5}
	model := make([]mesh.PeerName, small.Size())
	replicas := make([]*Ring, n)
	base := New(small)
	if err := base.Seed(peers); err != nil {
		t.Fatal(err)
	}
	for a := small.Start; a < small.End; a++ {
		model[a-small.Start] = base.Owner(a)
	}
	for i := range replicas {
		replicas[i] = base.Clone()
	}
	checkSafe := func(step int) {
		for i, r := range replicas {
			if err := r.Check(); err != nil {
				t.Fatalf("step %d replica %d: %v", step, i, err)
			}
			for _, own := range r.OwnedBy(peers[i]) {
				for a := own.Start; a < own.End; a++ {
					if model[a-small.Start] != peers[i] {
						t.Fatalf("step %d: peer %v believes it owns %s, model says %v", step, peers[i], a, model[a-small.Start])
					}
				}
			}
		}
	}
	for step := range 400 {
		switch rnd.IntN(3) {
		case 0: // a peer grants part of what it owns
			i := rnd.IntN(n)
			own := replicas[i].OwnedBy(peers[i])
			if len(own) == 0 {
				continue
			}
			o := own[rnd.IntN(len(own))]
			s := o.Start + addr.Addr(rnd.IntN(int(o.Size())))
			e := s + 1 + addr.Addr(rnd.IntN(int(o.End-s)))
			to := peers[rnd.IntN(n)]
			if to == peers[i] {
				continue
			}
			if err := replicas[i].Grant(peers[i], addr.Range{Start: s, End: e}, to); err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
			for a := s; a < e; a++ {
				model[a-small.Start] = to
			}
		case 1: // gossip one way, the message possibly stale
			i, j := rnd.IntN(n), rnd.IntN(n)
			if _, err := replicas[j].Merge(replicas[i].Clone()); err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
		case 2: // an owner reports free space
			i := rnd.IntN(n)
			for _, pc := range replicas[i].Pieces() {
				if pc.Peer == peers[i] {
					replicas[i].SetFree(peers[i], pc.Token, uint32(rnd.IntN(int(pc.Size())+1)))
				}
			}
		}
		checkSafe(step)
	}
	// Full gossip: everyone converges on the model.
	for range 2 {
		for i := range replicas {
			for j := range replicas {
				if _, err := replicas[j].Merge(replicas[i]); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	for i, r := range replicas {
		if !r.Equal(replicas[0]) {
			t.Fatalf("replica %d did not converge", i)
		}
		for a := small.Start; a < small.End; a++ {
			if r.Owner(a) != model[a-small.Start] {
				t.Fatalf("replica %d: owner of %s is %v, model %v", i, a, r.Owner(a), model[a-small.Start])
			}
		}
	}
}

// Merge is a join: commutative, associative, idempotent, even with conflicting histories.
func TestMergeIsAJoin(t *testing.T) {
	rnd := rand.New(rand.NewPCG(42, 42))
	small := addr.Range{Start: 0, End: 64}
	base := New(small)
	_ = base.Seed([]mesh.PeerName{1, 2, 3})
	mutate := func(r *Ring) {
		for range rnd.IntN(6) {
			p := mesh.PeerName(1 + rnd.IntN(3))
			switch rnd.IntN(3) {
			case 0:
				own := r.OwnedBy(p)
				if len(own) == 0 {
					continue
				}
				o := own[rnd.IntN(len(own))]
				s := o.Start + addr.Addr(rnd.IntN(int(o.Size())))
				_ = r.Grant(p, addr.Range{Start: s, End: s + 1}, mesh.PeerName(1+rnd.IntN(4)))
			case 1:
				r.Transfer(p, mesh.PeerName(1+rnd.IntN(4)), uint32(rnd.IntN(3)))
			case 2:
				for _, pc := range r.Pieces() {
					r.SetFree(pc.Peer, pc.Token, uint32(rnd.IntN(int(pc.Size())+1)))
				}
			}
		}
	}
	merged := func(rs ...*Ring) *Ring {
		out := rs[0].Clone()
		for _, r := range rs[1:] {
			if _, err := out.Merge(r); err != nil {
				t.Fatal(err)
			}
		}
		return out
	}
	for range 500 {
		a, b, c := base.Clone(), base.Clone(), base.Clone()
		mutate(a)
		mutate(b)
		mutate(c)
		if !merged(a, b).Equal(merged(b, a)) {
			t.Fatal("merge not commutative")
		}
		if !merged(merged(a, b), c).Equal(merged(a, merged(b, c))) {
			t.Fatal("merge not associative")
		}
		ab := merged(a, b)
		if !merged(ab, b).Equal(ab) || !merged(ab, a).Equal(ab) {
			t.Fatal("merge not idempotent")
		}
		if err := ab.Check(); err != nil {
			t.Fatal(err)
		}
	}
}
