package space

import (
	"math/rand/v2"
	"testing"

	"github.com/weavemesh/weave/ipam/addr"
)

// Set against a map of addresses.
func TestSetDifferential(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	s := &Set{}
	model := map[addr.Addr]bool{}
	for step := range 5000 {
		a := addr.Addr(rnd.IntN(200))
		r := addr.Range{Start: a, End: a + addr.Addr(rnd.IntN(12))}
		if rnd.IntN(2) == 0 {
			s.Add(r)
			for x := r.Start; x < r.End; x++ {
				model[x] = true
			}
		} else {
			s.Remove(r)
			for x := r.Start; x < r.End; x++ {
				delete(model, x)
			}
		}
		if s.Size() != uint64(len(model)) {
			t.Fatalf("step %d: size %d, model %d", step, s.Size(), len(model))
		}
		for i, x := range s.rs {
			if x.Size() == 0 || (i > 0 && s.rs[i-1].End >= x.Start) {
				t.Fatalf("step %d: ranges not sorted, disjoint and coalesced: %v", step, s.rs)
			}
		}
		q := addr.Range{Start: addr.Addr(rnd.IntN(210)), End: 0}
		q.End = q.Start + addr.Addr(rnd.IntN(30))
		var want addr.Addr
		found := false
		var n uint32
		for x := q.Start; x < q.End; x++ {
			if model[x] {
				if !found {
					want, found = x, true
				}
				n++
			}
		}
		got, ok := s.FirstIn(q)
		if ok != found || (ok && got != want) {
			t.Fatalf("step %d: FirstIn(%v) = %v,%v want %v,%v", step, q, got, ok, want, found)
		}
		if s.SizeIn(q) != n {
			t.Fatalf("step %d: SizeIn(%v) = %d want %d", step, q, s.SizeIn(q), n)
		}
		if s.Contains(q.Start) != model[q.Start] {
			t.Fatalf("step %d: Contains(%v)", step, q.Start)
		}
	}
}

func TestAllocateLowestAndRelease(t *testing.T) {
	sp := New()
	sp.SetOwned([]addr.Range{{Start: 10, End: 20}})
	for want := addr.Addr(10); want < 20; want++ {
		a, ok := sp.Allocate(addr.Range{Start: 0, End: 100})
		if !ok || a != want {
			t.Fatalf("allocate got %v,%v want %v", a, ok, want)
		}
	}
	if _, ok := sp.Allocate(addr.Range{Start: 0, End: 100}); ok {
		t.Fatal("allocated beyond owned space")
	}
	sp.Release(13)
	if a, _ := sp.Allocate(addr.Range{Start: 0, End: 100}); a != 13 {
		t.Fatalf("released address not reused first: %v", a)
	}
	// Losing ownership keeps the addresses taken: they become orphans.
	sp.SetOwned([]addr.Range{{Start: 10, End: 15}})
	if o := sp.Orphans(); len(o) != 1 || o[0] != (addr.Range{Start: 15, End: 20}) {
		t.Fatalf("orphans %v", o)
	}
	sp.Release(17)
	if sp.Owns(17) || sp.IsFree(17) || sp.IsTaken(17) {
		t.Fatal("released orphan still tracked")
	}
	// Regaining ownership does not free addresses still in use.
	sp.SetOwned([]addr.Range{{Start: 10, End: 20}})
	if sp.IsFree(16) || !sp.IsFree(17) || sp.NumFree() != 1 {
		t.Fatalf("free after regain: %v", sp.free.Ranges())
	}
}

func TestDonateGivesAtMostHalfAligned(t *testing.T) {
	sp := New()
	sp.SetOwned([]addr.Range{{Start: 0, End: 64}})
	sp.Take(0)
	b, ok := sp.Donate(addr.Range{Start: 0, End: 64})
	// 63 free: at most 31 may go, so the biggest aligned block is 16, the highest one.
	if !ok || b != (addr.Range{Start: 48, End: 64}) {
		t.Fatalf("donated %v", b)
	}
	if sp.NumOwned() != 48 || sp.Owns(50) {
		t.Fatal("donated space still owned")
	}
	b, _ = sp.Donate(addr.Range{Start: 0, End: 64})
	if b != (addr.Range{Start: 32, End: 48}) {
		t.Fatalf("second donation %v, want 16 of the 47 free", b)
	}
	one := New()
	one.SetOwned([]addr.Range{{Start: 5, End: 6}})
	if b, ok := one.Donate(addr.Range{Start: 0, End: 64}); !ok || b.Size() != 1 {
		t.Fatalf("last address not donated: %v", b)
	}
	if _, ok := one.Donate(addr.Range{Start: 0, End: 64}); ok {
		t.Fatal("donated from nothing")
	}
	g := New()
	g.SetOwned([]addr.Range{{Start: 0, End: 8}})
	g.Take(3)
	if g.Give(addr.Range{Start: 3, End: 4}) {
		t.Fatal("gave away an address in use")
	}
	if !g.Give(addr.Range{Start: 4, End: 5}) || g.Owns(4) {
		t.Fatal("give of a free address failed")
	}
}

func TestQuarantinedSpaceIsUsedLast(t *testing.T) {
	sp := New()
	sp.SetOwned([]addr.Range{{Start: 0, End: 16}})
	sp.Quarantine(addr.Range{Start: 0, End: 4})
	sp.Quarantine(addr.Range{Start: 6, End: 8})
	var got []addr.Addr
	for range 16 {
		a, ok := sp.Allocate(addr.Range{Start: 0, End: 16})
		if !ok {
			t.Fatal("ran out early")
		}
		got = append(got, a)
	}
	want := []addr.Addr{4, 5, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 6, 7}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("allocation order %v, want %v", got, want)
		}
	}
}
