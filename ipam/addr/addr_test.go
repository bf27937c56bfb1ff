package addr

import (
	"net/netip"
	"testing"
)

func TestFromPrefix(t *testing.T) {
	r, err := FromPrefix(netip.MustParsePrefix("10.32.0.0/12"))
	if err != nil {
		t.Fatal(err)
	}
	if r.Size() != 1<<20 || r.Start.String() != "10.32.0.0" || r.End.String() != "10.48.0.0" {
		t.Fatalf("got %v size %d", r, r.Size())
	}
	if p, ok := r.Prefix(); !ok || p.String() != "10.32.0.0/12" {
		t.Fatalf("prefix round trip: %v %v", p, ok)
	}
	for _, bad := range []string{"::1/64", "255.255.255.0/24", "0.0.0.0/0"} {
		if _, err := FromPrefix(netip.MustParsePrefix(bad)); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
}

func TestUsable(t *testing.T) {
	r := Range{100, 108}
	if u := Usable(r); u != (Range{101, 107}) {
		t.Fatalf("usable %v", u)
	}
	if u := Usable(Range{100, 102}); u != (Range{100, 102}) {
		t.Fatalf("tiny usable %v", u)
	}
}

func TestLargestAlignedBlock(t *testing.T) {
	cases := []struct {
		r     Range
		limit uint32
		want  Range
	}{
		{Range{0, 16}, 0, Range{0, 16}},
		{Range{0, 16}, 8, Range{8, 16}},
		{Range{1, 16}, 0, Range{8, 16}},
		{Range{3, 13}, 0, Range{8, 12}},
		{Range{5, 6}, 0, Range{5, 6}},
		{Range{5, 5}, 0, Range{}},
		{Range{6, 10}, 1, Range{9, 10}},
	}
	for _, c := range cases {
		if got := LargestAlignedBlock(c.r, c.limit); got != c.want {
			t.Errorf("LargestAlignedBlock(%v,%d) = %v want %v", c.r, c.limit, got, c.want)
		}
		if got := LargestAlignedBlock(c.r, c.limit); got.Size() > 0 {
			if _, ok := got.Prefix(); !ok {
				t.Errorf("%v not aligned", got)
			}
		}
	}
}
