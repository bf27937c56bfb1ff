// Package space tracks one peer's part of the allocation range: which addresses it owns,
// which of those are free, and which addresses its containers use (including addresses it
// no longer owns, so they can be re-claimed instead of handed out twice).
package space

import (
	"slices"
	"sort"

	"github.com/weavemesh/weave/ipam/addr"
)

// Set is a set of addresses stored as sorted, disjoint, non-adjacent ranges, so that
// allocation-heavy spaces stay small and the lowest free address is found by binary search.
type Set struct {
	rs []addr.Range
}

// NewSet returns the union of rs.
func NewSet(rs ...addr.Range) *Set {
	s := &Set{}
	for _, r := range rs {
		s.Add(r)
	}
	return s
}

// Ranges returns a copy of the ranges, in address order.
func (s *Set) Ranges() []addr.Range { return slices.Clone(s.rs) }

// Clone returns a deep copy.
func (s *Set) Clone() *Set { return &Set{rs: slices.Clone(s.rs)} }

// Size returns the number of addresses in s.
func (s *Set) Size() uint64 {
	var n uint64
	for _, r := range s.rs {
		n += uint64(r.Size())
	}
	return n
}

// SizeIn returns the number of addresses of s inside r.
func (s *Set) SizeIn(r addr.Range) uint32 {
	var n uint32
	for i := s.first(r.Start); i < len(s.rs) && s.rs[i].Start < r.End; i++ {
		n += s.rs[i].Intersect(r).Size()
	}
	return n
}

// first returns the index of the first range that ends after a.
func (s *Set) first(a addr.Addr) int {
	return sort.Search(len(s.rs), func(i int) bool { return s.rs[i].End > a })
}

// Contains reports whether a is in s.
func (s *Set) Contains(a addr.Addr) bool {
	i := s.first(a)
	return i < len(s.rs) && s.rs[i].Start <= a
}

// FirstIn returns the lowest address of s inside r.
func (s *Set) FirstIn(r addr.Range) (addr.Addr, bool) {
	i := s.first(r.Start)
	if i == len(s.rs) {
		return 0, false
	}
	x := s.rs[i].Intersect(r)
	if x.Size() == 0 {
		return 0, false
	}
	return x.Start, true
}

// In returns the ranges of s inside r.
func (s *Set) In(r addr.Range) []addr.Range {
	var out []addr.Range
	for i := s.first(r.Start); i < len(s.rs) && s.rs[i].Start < r.End; i++ {
		if x := s.rs[i].Intersect(r); x.Size() > 0 {
			out = append(out, x)
		}
	}
	return out
}

// Add inserts r.
func (s *Set) Add(r addr.Range) {
	if r.Size() == 0 {
		return
	}
	// Ranges touching or overlapping r are [i, j); they collapse into one.
	i := sort.Search(len(s.rs), func(i int) bool { return s.rs[i].End >= r.Start })
	j := i
	for j < len(s.rs) && s.rs[j].Start <= r.End {
		r.Start = min(r.Start, s.rs[j].Start)
		r.End = max(r.End, s.rs[j].End)
		j++
	}
	s.rs = slices.Replace(s.rs, i, j, r)
}

// Remove deletes r.
func (s *Set) Remove(r addr.Range) {
	if r.Size() == 0 {
		return
	}
	i := s.first(r.Start)
	j := i
	var keep []addr.Range
	for j < len(s.rs) && s.rs[j].Start < r.End {
		x := s.rs[j]
		if x.Start < r.Start {
			keep = append(keep, addr.Range{Start: x.Start, End: r.Start})
		}
		if x.End > r.End {
			keep = append(keep, addr.Range{Start: r.End, End: x.End})
		}
		j++
	}
	s.rs = slices.Replace(s.rs, i, j, keep...)
}

// AddAddr and RemoveAddr are the single-address forms.
func (s *Set) AddAddr(a addr.Addr)    { s.Add(addr.Range{Start: a, End: a + 1}) }
func (s *Set) RemoveAddr(a addr.Addr) { s.Remove(addr.Range{Start: a, End: a + 1}) }

// Minus returns s without the addresses of o.
func (s *Set) Minus(o *Set) *Set {
	out := s.Clone()
	for _, r := range o.rs {
		out.Remove(r)
	}
	return out
}
