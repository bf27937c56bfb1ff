package space

import (
	"github.com/weavemesh/weave/ipam/addr"
)

// Space is one peer's address bookkeeping. It is not safe for concurrent use: the allocator
// serialises access.
type Space struct {
	owned *Set // what the ring says we own
	taken *Set // addresses our containers use, owned or not
	free  *Set // owned minus taken
	// quarantine holds space taken over from a dead peer: it is handed out last, so that
	// if the peer comes back, the addresses its containers still use are likely free to
	// give back to it.
	quarantine *Set
}

// New returns an empty space.
func New() *Space { return &Space{owned: &Set{}, taken: &Set{}, free: &Set{}, quarantine: &Set{}} }

// Quarantine marks r as taken over from a dead peer: Allocate uses it only when nothing
// else is free.
func (s *Space) Quarantine(r addr.Range) { s.quarantine.Add(r) }

// SetOwned replaces the owned ranges (after a ring change). Addresses in use stay taken
// whether or not we still own them.
func (s *Space) SetOwned(rs []addr.Range) {
	s.owned = NewSet(rs...)
	s.free = s.owned.Minus(s.taken)
}

// Owned returns the owned ranges.
func (s *Space) Owned() []addr.Range { return s.owned.Ranges() }

// Owns reports whether a is in our space.
func (s *Space) Owns(a addr.Addr) bool { return s.owned.Contains(a) }

// IsFree reports whether a is ours and unused.
func (s *Space) IsFree(a addr.Addr) bool { return s.free.Contains(a) }

// IsTaken reports whether a is in use here.
func (s *Space) IsTaken(a addr.Addr) bool { return s.taken.Contains(a) }

// Allocate takes the lowest free address inside r.
func (s *Space) Allocate(r addr.Range) (addr.Addr, bool) {
	a, ok := s.firstOutsideQuarantine(r)
	if !ok {
		if a, ok = s.free.FirstIn(r); !ok {
			return 0, false
		}
	}
	s.free.RemoveAddr(a)
	s.taken.AddAddr(a)
	return a, true
}

func (s *Space) firstOutsideQuarantine(r addr.Range) (addr.Addr, bool) {
	if s.quarantine.Size() == 0 {
		return s.free.FirstIn(r)
	}
	for {
		a, ok := s.free.FirstIn(r)
		if !ok || !s.quarantine.Contains(a) {
			return a, ok
		}
		// Skip the quarantined run that holds a.
		q := s.quarantine.In(addr.Range{Start: a, End: r.End})
		r.Start = q[0].End
		if r.Start >= r.End {
			return 0, false
		}
	}
}

// Take marks a as in use, whether we own it or not (a restarted container keeping its
// address, an address we lost to a reclaim and want back).
func (s *Space) Take(a addr.Addr) {
	s.taken.AddAddr(a)
	s.free.RemoveAddr(a)
}

// Release returns a to the free pool if we own it.
func (s *Space) Release(a addr.Addr) {
	s.taken.RemoveAddr(a)
	if s.owned.Contains(a) {
		s.free.AddAddr(a)
	}
}

// FreeIn returns the number of free addresses inside r.
func (s *Space) FreeIn(r addr.Range) uint32 { return s.free.SizeIn(r) }

// NumOwned, NumFree and NumTaken are the totals.
func (s *Space) NumOwned() uint64 { return s.owned.Size() }
func (s *Space) NumFree() uint64  { return s.free.Size() }
func (s *Space) NumTaken() uint64 { return s.taken.Size() }

// Orphans returns addresses in use that we do not own.
func (s *Space) Orphans() []addr.Range { return s.taken.Minus(s.owned).Ranges() }

// Donate picks space to give a peer that asked for some inside r: the biggest free
// CIDR-aligned block there, but at most half of our free space in r (at least one address),
// and removes it from our space. The caller records the grant in the ring.
func (s *Space) Donate(r addr.Range) (addr.Range, bool) {
	freeIn := s.free.SizeIn(r)
	if freeIn == 0 {
		return addr.Range{}, false
	}
	limit := max(freeIn/2, 1)
	var best addr.Range
	for _, fr := range s.free.In(r) {
		if b := addr.LargestAlignedBlock(fr, limit); b.Size() >= best.Size() {
			best = b
		}
	}
	if best.Size() == 0 {
		return addr.Range{}, false
	}
	s.owned.Remove(best)
	s.free.Remove(best)
	return best, true
}

// Give removes exactly r (all of it free) from our space, for a peer re-claiming one address.
func (s *Space) Give(r addr.Range) bool {
	if s.free.SizeIn(r) != r.Size() {
		return false
	}
	s.owned.Remove(r)
	s.free.Remove(r)
	return true
}
