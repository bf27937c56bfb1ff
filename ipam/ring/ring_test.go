package ring

import (
	"errors"
	"slices"
	"testing"

	"github.com/weavemesh/weave/ipam/addr"
	"github.com/weavemesh/weave/mesh"
)

var rg = addr.Range{Start: 0x0a200000, End: 0x0a200000 + 1024}

func seeded(t *testing.T, peers ...mesh.PeerName) *Ring {
	t.Helper()
	r := New(rg)
	if err := r.Seed(peers); err != nil {
		t.Fatal(err)
	}
	if err := r.Check(); err != nil {
		t.Fatal(err)
	}
	return r
}

func total(rs []addr.Range) uint32 {
	var n uint32
	for _, r := range rs {
		n += r.Size()
	}
	return n
}

func TestSeedSplitsIntoAlignedBlocks(t *testing.T) {
	r := seeded(t, 3, 1, 2, 2)
	if !slices.Equal(r.Seeds, []mesh.PeerName{1, 2, 3}) {
		t.Fatalf("seeds %v", r.Seeds)
	}
	var sum uint32
	for _, p := range []mesh.PeerName{1, 2, 3} {
		own := r.OwnedBy(p)
		if len(own) != 1 {
			t.Fatalf("peer %v owns %v", p, own)
		}
		if _, ok := own[0].Prefix(); !ok {
			t.Errorf("peer %v block %v not CIDR aligned", p, own[0])
		}
		sum += own[0].Size()
	}
	if sum != rg.Size() {
		t.Fatalf("seeded %d of %d addresses", sum, rg.Size())
	}
	if err := r.Seed([]mesh.PeerName{4}); err == nil {
		t.Fatal("seeding twice accepted")
	}
	if err := New(rg).Seed(nil); err == nil {
		t.Fatal("seeding with no peers accepted")
	}
}

func TestGrantSplitsAndChecksOwnership(t *testing.T) {
	r := seeded(t, 1, 2)
	a := r.OwnedBy(1)[0]
	sub := addr.Range{Start: a.Start + 128, End: a.Start + 256}
	if err := r.Grant(1, sub, 3); err != nil {
		t.Fatal(err)
	}
	if err := r.Check(); err != nil {
		t.Fatal(err)
	}
	if got := r.OwnedBy(3); len(got) != 1 || got[0] != sub {
		t.Fatalf("peer 3 owns %v, want %v", got, sub)
	}
	if got := total(r.OwnedBy(1)); got != a.Size()-128 {
		t.Fatalf("peer 1 kept %d", got)
	}
	if len(r.Entries) != 4 {
		t.Fatalf("grant inside a piece must add exactly two tokens, ring has %d entries", len(r.Entries))
	}
	// Peer 1 cannot give what it no longer owns.
	if err := r.Grant(1, sub, 2); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("regrant: %v", err)
	}
	if err := r.Grant(1, addr.Range{Start: rg.End, End: rg.End + 1}, 2); err == nil {
		t.Fatal("grant outside the range accepted")
	}
}

func TestMergeTakesNewerAndIgnoresStale(t *testing.T) {
	a := seeded(t, 1, 2)
	stale := a.Clone()
	own := a.OwnedBy(1)[0]
	if err := a.Grant(1, addr.Range{Start: own.End - 16, End: own.End}, 2); err != nil {
		t.Fatal(err)
	}
	b := stale.Clone()
	res, err := b.Merge(a)
	if err != nil || !res.Changed || len(res.Conflicts) != 0 {
		t.Fatalf("merge newer: %+v %v", res, err)
	}
	if !b.Equal(a) {
		t.Fatal("b did not converge to a")
	}
	res, err = b.Merge(stale)
	if err != nil || res.Changed {
		t.Fatalf("stale message changed the ring: %+v %v", res, err)
	}
	res, err = b.Merge(b.Clone())
	if err != nil || res.Changed {
		t.Fatalf("merge with itself changed the ring: %+v %v", res, err)
	}
}

func TestMergeRefusesForeignRings(t *testing.T) {
	a := seeded(t, 1, 2)
	b := seeded(t, 1, 3)
	before := a.Clone()
	if _, err := a.Merge(b); !errors.Is(err, ErrSeedMismatch) {
		t.Fatalf("different seeds: %v", err)
	}
	other := New(addr.Range{Start: 0, End: 1024})
	if err := other.Seed([]mesh.PeerName{1, 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Merge(other); !errors.Is(err, ErrRangeMismatch) {
		t.Fatalf("different range: %v", err)
	}
	bad := a.Clone()
	bad.Entries[1].Token = bad.Entries[0].Token
	if _, err := a.Merge(bad); !errors.Is(err, ErrInvalid) {
		t.Fatalf("invalid ring: %v", err)
	}
	if !a.Equal(before) {
		t.Fatal("a refused merge modified the ring")
	}
	// An empty ring adopts whatever comes first.
	e := New(rg)
	if res, err := e.Merge(a); err != nil || !res.Changed || !e.Equal(a) {
		t.Fatalf("empty ring did not adopt: %v", err)
	}
}

func TestConflictingTransfersConvergeAndAreReported(t *testing.T) {
	base := seeded(t, 1, 2, 3)
	// Peers 2 and 3 both run rmpeer on dead peer 1.
	x, y := base.Clone(), base.Clone()
	nx := x.Transfer(1, 2, 100)
	ny := y.Transfer(1, 3, 100)
	if nx == 0 || nx != ny {
		t.Fatalf("transfers moved %d and %d", nx, ny)
	}
	x2, y2 := x.Clone(), y.Clone()
	rx, err := x2.Merge(y)
	if err != nil {
		t.Fatal(err)
	}
	ry, err := y2.Merge(x)
	if err != nil {
		t.Fatal(err)
	}
	if !x2.Equal(y2) {
		t.Fatal("conflicting rings did not converge")
	}
	if len(rx.Conflicts) == 0 || len(ry.Conflicts) == 0 {
		t.Fatalf("conflicts not reported: %+v %+v", rx, ry)
	}
	if rx.Conflicts[0].Winner.Peer != 3 {
		t.Fatalf("tie-break picked %v", rx.Conflicts[0].Winner.Peer)
	}
	if len(x2.OwnedBy(1)) != 0 {
		t.Fatal("dead peer still owns space")
	}
}

func TestDonorsOrderedByFree(t *testing.T) {
	r := seeded(t, 1, 2, 3)
	r.SetFree(2, r.OwnedBy(2)[0].Start, 10)
	r.SetFree(3, r.OwnedBy(3)[0].Start, 20)
	d := r.Donors(rg, 1)
	if len(d) != 2 || d[0].Peer != 3 || d[1].Peer != 2 || d[0].Free != 20 {
		t.Fatalf("donors %v", d)
	}
	if d := r.Donors(r.OwnedBy(2)[0], 1); len(d) != 1 || d[0].Peer != 2 {
		t.Fatalf("donors in peer 2's subnet: %v", d)
	}
	if r.SetFree(1, r.OwnedBy(2)[0].Start, 5) {
		t.Fatal("a non-owner changed free")
	}
}

func TestCodecRoundTrip(t *testing.T) {
	r := seeded(t, 1, 2, 3)
	if err := r.Grant(1, addr.Range{Start: rg.Start + 4, End: rg.Start + 8}, 9); err != nil {
		t.Fatal(err)
	}
	d, err := Decode(r.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if !d.Equal(r) {
		t.Fatalf("round trip changed the ring:\n%+v\n%+v", r, d)
	}
	e, err := Decode(New(rg).Encode())
	if err != nil || !e.Empty() {
		t.Fatalf("empty ring: %v", err)
	}
	enc := r.Encode()
	for _, cut := range []int{0, 1, 5, len(enc) - 1} {
		if _, err := Decode(enc[:cut]); err == nil {
			t.Errorf("truncated at %d accepted", cut)
		}
	}
}

func FuzzDecode(f *testing.F) {
	r := New(rg)
	f.Add(r.Encode())
	_ = r.Seed([]mesh.PeerName{1, 2, 3})
	f.Add(r.Encode())
	f.Add([]byte{})
	f.Add([]byte{'R', 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := Decode(b)
		if err != nil {
			return
		}
		if err := r.Check(); err != nil {
			t.Fatalf("decoded ring fails its own check: %v", err)
		}
		r2, err := Decode(r.Encode())
		if err != nil || !r2.Equal(r) {
			t.Fatalf("re-encoding is not stable: %v", err)
		}
		// A decoded ring must merge without panicking into a compatible one.
		o := New(r.Range)
		_, _ = o.Merge(r)
		_, _ = o.Merge(r)
	})
}
