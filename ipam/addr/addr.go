// Package addr holds the IPv4 address arithmetic shared by the IPAM ring and space: addresses
// as integers, half-open ranges, and CIDR-aligned blocks.
package addr

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
)

// Addr is an IPv4 address as a big-endian integer.
type Addr uint32

// ErrUnsupported is returned (wrapped) for prefixes the allocator cannot manage.
var ErrUnsupported = errors.New("unsupported address range")

// FromNetip converts an IPv4 (or IPv4-mapped) address.
func FromNetip(a netip.Addr) (Addr, bool) {
	a = a.Unmap()
	if !a.Is4() {
		return 0, false
	}
	b := a.As4()
	return Addr(binary.BigEndian.Uint32(b[:])), true
}

// Netip converts back to a netip.Addr.
func (a Addr) Netip() netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(a))
	return netip.AddrFrom4(b)
}

func (a Addr) String() string { return a.Netip().String() }

// Range is the half-open interval [Start, End). End never wraps: ranges that would end at
// 2^32 are refused by FromPrefix, which keeps all arithmetic in uint32.
type Range struct {
	Start, End Addr
}

// Size returns the number of addresses in r.
func (r Range) Size() uint32 {
	if r.End <= r.Start {
		return 0
	}
	return uint32(r.End - r.Start)
}

// Contains reports whether a lies in r.
func (r Range) Contains(a Addr) bool { return a >= r.Start && a < r.End }

// ContainsRange reports whether o lies entirely inside r.
func (r Range) ContainsRange(o Range) bool { return o.Start >= r.Start && o.End <= r.End }

// Overlaps reports whether r and o share an address.
func (r Range) Overlaps(o Range) bool { return r.Start < o.End && o.Start < r.End }

// Intersect returns the common part of r and o (empty when they do not overlap).
func (r Range) Intersect(o Range) Range {
	s, e := max(r.Start, o.Start), min(r.End, o.End)
	if e < s {
		e = s
	}
	return Range{s, e}
}

func (r Range) String() string {
	if r.Size() == 0 {
		return "[]"
	}
	return fmt.Sprintf("%s-%s", r.Start, r.End-1)
}

// FromPrefix converts an IPv4 prefix to the range it covers.
func FromPrefix(p netip.Prefix) (Range, error) {
	if !p.IsValid() {
		return Range{}, fmt.Errorf("%w: invalid prefix", ErrUnsupported)
	}
	p = p.Masked()
	a, ok := FromNetip(p.Addr())
	if !ok {
		return Range{}, fmt.Errorf("%w: %s is not IPv4", ErrUnsupported, p)
	}
	size := uint64(1) << (32 - p.Bits())
	if uint64(a)+size > 1<<32-1 {
		return Range{}, fmt.Errorf("%w: %s reaches 255.255.255.255", ErrUnsupported, p)
	}
	return Range{a, a + Addr(size)}, nil
}

// Prefix returns the prefix of r when r is exactly one CIDR block.
func (r Range) Prefix() (netip.Prefix, bool) {
	size := r.Size()
	if size == 0 || size&(size-1) != 0 || uint32(r.Start)&(size-1) != 0 {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(r.Start.Netip(), 32-bits.TrailingZeros32(size)), true
}

// Usable returns the addresses of subnet that may be handed out: the network and broadcast
// addresses are excluded when the subnet has at least 4 addresses, as Weave did.
func Usable(subnet Range) Range {
	if subnet.Size() >= 4 {
		return Range{subnet.Start + 1, subnet.End - 1}
	}
	return subnet
}

// LargestAlignedBlock returns the biggest CIDR-aligned block inside r that is no larger than
// limit (limit 0 means no limit). It prefers, among equally big blocks, the highest one, so a
// donor keeps its low addresses, where its own allocations start.
func LargestAlignedBlock(r Range, limit uint32) Range {
	var best Range
	a := uint64(r.Start)
	end := uint64(r.End)
	for a < end {
		// The biggest block starting at a: limited by a's alignment and by what is left.
		size := uint64(1) << 32
		if a != 0 {
			size = uint64(1) << bits.TrailingZeros64(a)
		}
		for size > end-a {
			size >>= 1
		}
		s := size
		if limit != 0 {
			for s > uint64(limit) {
				s >>= 1
			}
		}
		if s >= uint64(best.Size()) {
			// The highest s-sized block of this run is still aligned.
			best = Range{Addr(a + size - s), Addr(a + size)}
		}
		a += size
	}
	return best
}
