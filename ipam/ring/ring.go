// Package ring is the IPAM ring: the allocation range cut into consecutive pieces, each owned
// by one peer, and merged between peers as a CRDT.
//
// The ring is a sorted list of tokens. A token starts a piece that runs up to the next token
// (the last one runs to the end of the range), so every address has exactly one owner by
// construction: ownership is contiguous and pieces cannot overlap. Only a piece's owner
// changes it, bumping its version each time. Merging takes the union of the tokens and, per
// token, the entry with the higher version; tokens are never removed. That makes Merge a join
// (commutative, associative, idempotent), so peers converge whatever order, duplication or
// staleness gossip has. Equal versions with different content only happen when two peers
// each took over the same space (rmpeer run on two peers, or a reclaim on both sides of a
// partition); a fixed tie-break still converges, and Merge reports the conflict so the
// allocator can re-check its addresses instead of silently duplicating them.
//
// Everything here is pure and deterministic; the allocator owns locking and I/O.
package ring

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"sort"

	"github.com/weavemesh/weave/ipam/addr"
	"github.com/weavemesh/weave/mesh"
)

var (
	// ErrRangeMismatch: the other ring manages a different allocation range.
	ErrRangeMismatch = errors.New("incompatible IP allocation ranges")
	// ErrSeedMismatch: the other ring was split first by a different set of peers, so the
	// two rings hand out the same addresses independently and cannot be merged.
	ErrSeedMismatch = errors.New("IP allocation was seeded by different peers")
	// ErrInvalid: the ring breaks an invariant (unsorted, outside the range, ...).
	ErrInvalid = errors.New("invalid ring")
	// ErrNotOwner: an operation needs space the peer does not own.
	ErrNotOwner = errors.New("range not owned by peer")
)

// Entry is one token: the piece [Token, next token) belongs to Peer.
type Entry struct {
	Token   addr.Addr
	Peer    mesh.PeerName
	Version uint32
	// Free is the owner's last report of unallocated addresses in the piece; others use it
	// to pick whom to ask for space.
	Free uint32
}

// less orders entries for the same token: the higher version wins; the rest is an arbitrary
// but fixed tie-break so that conflicting peers still converge on one answer.
func less(a, b Entry) bool {
	if a.Version != b.Version {
		return a.Version < b.Version
	}
	if a.Peer != b.Peer {
		return a.Peer < b.Peer
	}
	return a.Free < b.Free
}

// Ring is the whole allocation range with its owners.
type Ring struct {
	Range addr.Range
	// Seeds are the peers that split the empty range first, sorted. Rings with different
	// seeds were created independently and refuse to merge.
	Seeds   []mesh.PeerName
	Entries []Entry
}

// New returns an empty ring over r.
func New(r addr.Range) *Ring { return &Ring{Range: r} }

// Empty reports whether nobody owns anything yet (consensus has not happened).
func (r *Ring) Empty() bool { return len(r.Entries) == 0 }

// Clone returns a deep copy.
func (r *Ring) Clone() *Ring {
	return &Ring{Range: r.Range, Seeds: slices.Clone(r.Seeds), Entries: slices.Clone(r.Entries)}
}

// Equal reports whether two rings hold the same state.
func (r *Ring) Equal(o *Ring) bool {
	return r.Range == o.Range && slices.Equal(r.Seeds, o.Seeds) && slices.Equal(r.Entries, o.Entries)
}

// pieceEnd returns the end of entry i's piece.
func (r *Ring) pieceEnd(i int) addr.Addr {
	if i+1 < len(r.Entries) {
		return r.Entries[i+1].Token
	}
	return r.Range.End
}

// Piece returns the range of entry i.
func (r *Ring) Piece(i int) addr.Range {
	return addr.Range{Start: r.Entries[i].Token, End: r.pieceEnd(i)}
}

// find returns the index of the entry whose piece holds a (-1 if the ring is empty or a is
// outside the range).
func (r *Ring) find(a addr.Addr) int {
	if r.Empty() || !r.Range.Contains(a) {
		return -1
	}
	i := sort.Search(len(r.Entries), func(i int) bool { return r.Entries[i].Token > a })
	return i - 1
}

// Owner returns the owner of a (UnknownPeerName if nobody owns it).
func (r *Ring) Owner(a addr.Addr) mesh.PeerName {
	if i := r.find(a); i >= 0 {
		return r.Entries[i].Peer
	}
	return mesh.UnknownPeerName
}

// PieceAt returns the piece holding a.
func (r *Ring) PieceAt(a addr.Addr) (Piece, bool) {
	i := r.find(a)
	if i < 0 {
		return Piece{}, false
	}
	return Piece{Range: r.Piece(i), Entry: r.Entries[i]}, true
}

// Seed splits an empty ring among peers: the range is halved recursively along CIDR
// boundaries, so every peer gets an aligned block (sizes differ by at most a factor of two).
func (r *Ring) Seed(peers []mesh.PeerName) error {
	if !r.Empty() {
		return fmt.Errorf("seed ring: %w: already seeded", ErrInvalid)
	}
	ps := slices.Clone(peers)
	slices.Sort(ps)
	ps = slices.Compact(ps)
	if len(ps) == 0 || ps[0] == mesh.UnknownPeerName {
		return fmt.Errorf("seed ring: %w: no valid peers", ErrInvalid)
	}
	if r.Range.Size() == 0 {
		return fmt.Errorf("seed ring: %w: empty range", ErrInvalid)
	}
	var split func(rg addr.Range, ps []mesh.PeerName)
	split = func(rg addr.Range, ps []mesh.PeerName) {
		if len(ps) == 1 || rg.Size() == 1 {
			r.Entries = append(r.Entries, Entry{Token: rg.Start, Peer: ps[0], Version: 1, Free: rg.Size()})
			return
		}
		mid := rg.Start + addr.Addr(rg.Size()/2)
		h := len(ps) / 2
		split(addr.Range{Start: rg.Start, End: mid}, ps[:h])
		split(addr.Range{Start: mid, End: rg.End}, ps[h:])
	}
	split(r.Range, ps)
	r.Seeds = ps
	return nil
}

// Piece describes one entry with its extent.
type Piece struct {
	addr.Range
	Entry
}

// Pieces lists every entry with its range, in address order.
func (r *Ring) Pieces() []Piece {
	out := make([]Piece, len(r.Entries))
	for i, e := range r.Entries {
		out[i] = Piece{Range: r.Piece(i), Entry: e}
	}
	return out
}

// OwnedBy returns the ranges owned by p, adjacent pieces coalesced, in address order.
func (r *Ring) OwnedBy(p mesh.PeerName) []addr.Range {
	var out []addr.Range
	for i, e := range r.Entries {
		if e.Peer != p {
			continue
		}
		pc := r.Piece(i)
		if n := len(out); n > 0 && out[n-1].End == pc.Start {
			out[n-1].End = pc.End
			continue
		}
		out = append(out, pc)
	}
	return out
}

// Owners returns the peers that own space, sorted.
func (r *Ring) Owners() []mesh.PeerName {
	var out []mesh.PeerName
	for _, e := range r.Entries {
		out = append(out, e.Peer)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// split makes sure a token starts at a, inserting one that continues the piece holding a.
// The new entry gets the version of the piece it splits plus one, so it beats any stale
// entry another peer may still have for that token.
func (r *Ring) split(a addr.Addr) int {
	i := r.find(a)
	if r.Entries[i].Token == a {
		return i
	}
	e := r.Entries[i]
	e.Token = a
	e.Version++
	e.Free = 0 // the owner reports the real figure next time it looks
	r.Entries = slices.Insert(r.Entries, i+1, e)
	return i + 1
}

// Grant gives rg, which from must own entirely, to to. It adds at most two tokens.
func (r *Ring) Grant(from mesh.PeerName, rg addr.Range, to mesh.PeerName) error {
	if rg.Size() == 0 || !r.Range.ContainsRange(rg) || to == mesh.UnknownPeerName {
		return fmt.Errorf("grant %v: %w: bad range or peer", rg, ErrInvalid)
	}
	if !r.owns(from, rg) {
		return fmt.Errorf("grant %v from %s: %w", rg, from, ErrNotOwner)
	}
	first := r.split(rg.Start)
	if rg.End < r.Range.End {
		r.split(rg.End)
	}
	for i := first; i < len(r.Entries) && r.Entries[i].Token < rg.End; i++ {
		e := &r.Entries[i]
		e.Peer = to
		e.Version++
		e.Free = r.Piece(i).Size()
	}
	return nil
}

func (r *Ring) owns(p mesh.PeerName, rg addr.Range) bool {
	i := r.find(rg.Start)
	if i < 0 {
		return false
	}
	for ; i < len(r.Entries) && r.Entries[i].Token < rg.End; i++ {
		if r.Entries[i].Peer != p {
			return false
		}
	}
	return true
}

// Transfer gives everything from owns to to, adding bump to each version so the change wins
// over edits from that may still be in flight. It returns the number of addresses moved.
// It is how rmpeer, automatic reclaim and the hand-over on reset work.
func (r *Ring) Transfer(from, to mesh.PeerName, bump uint32) uint32 {
	var n uint32
	for i := range r.Entries {
		e := &r.Entries[i]
		if e.Peer != from {
			continue
		}
		size := r.Piece(i).Size()
		e.Peer = to
		e.Version += bump
		e.Free = size // the new owner cannot know what from had allocated
		n += size
	}
	return n
}

// SetFree records the owner's count of free addresses in the piece starting at token,
// bumping the version when it changed. It reports whether anything changed.
func (r *Ring) SetFree(owner mesh.PeerName, token addr.Addr, free uint32) bool {
	i := r.find(token)
	if i < 0 || r.Entries[i].Token != token || r.Entries[i].Peer != owner || r.Entries[i].Free == free {
		return false
	}
	r.Entries[i].Free = free
	r.Entries[i].Version++
	return true
}

// Donor is a peer with free space in some subnet.
type Donor struct {
	Peer mesh.PeerName
	Free uint32
}

// Donors lists the owners (other than self) with free space inside subnet, most free first.
func (r *Ring) Donors(subnet addr.Range, self mesh.PeerName) []Donor {
	free := map[mesh.PeerName]uint32{}
	for i, e := range r.Entries {
		if e.Peer == self || e.Free == 0 {
			continue
		}
		pc := r.Piece(i)
		ov := pc.Intersect(subnet).Size()
		if ov == 0 {
			continue
		}
		free[e.Peer] += min(e.Free, ov)
	}
	out := make([]Donor, 0, len(free))
	for p, f := range free {
		out = append(out, Donor{p, f})
	}
	slices.SortFunc(out, func(a, b Donor) int {
		return cmp.Or(cmp.Compare(b.Free, a.Free), cmp.Compare(a.Peer, b.Peer))
	})
	return out
}

// Conflict is a token for which two different entries carry the same version.
type Conflict struct {
	Ours, Theirs, Winner Entry
}

func (c Conflict) String() string {
	return fmt.Sprintf("token %s version %d claimed by both %s and %s (kept %s)",
		c.Ours.Token, c.Ours.Version, c.Ours.Peer, c.Theirs.Peer, c.Winner.Peer)
}

// Result says what a Merge did.
type Result struct {
	Changed   bool
	Conflicts []Conflict
}

// Merge folds o into r. It refuses rings over another range, rings with other seeds and
// invalid rings, leaving r untouched; otherwise it joins them.
func (r *Ring) Merge(o *Ring) (Result, error) {
	if o.Range != r.Range {
		return Result{}, fmt.Errorf("merge ring: %w: ours %v, theirs %v", ErrRangeMismatch, r.Range, o.Range)
	}
	if err := o.Check(); err != nil {
		return Result{}, fmt.Errorf("merge ring: %w", err)
	}
	if o.Empty() {
		return Result{}, nil
	}
	if r.Empty() {
		r.Seeds = slices.Clone(o.Seeds)
		r.Entries = slices.Clone(o.Entries)
		return Result{Changed: true}, nil
	}
	if !slices.Equal(r.Seeds, o.Seeds) {
		return Result{}, fmt.Errorf("merge ring: %w: ours %v, theirs %v", ErrSeedMismatch, r.Seeds, o.Seeds)
	}
	if slices.Equal(r.Entries, o.Entries) {
		return Result{}, nil // the common case for periodic gossip
	}
	var res Result
	out := make([]Entry, 0, max(len(r.Entries), len(o.Entries)))
	i, j := 0, 0
	for i < len(r.Entries) || j < len(o.Entries) {
		switch {
		case j == len(o.Entries) || (i < len(r.Entries) && r.Entries[i].Token < o.Entries[j].Token):
			out = append(out, r.Entries[i])
			i++
		case i == len(r.Entries) || o.Entries[j].Token < r.Entries[i].Token:
			out = append(out, o.Entries[j])
			res.Changed = true
			j++
		default:
			a, b := r.Entries[i], o.Entries[j]
			w := a
			if less(a, b) {
				w = b
				res.Changed = true
			}
			if a != b && a.Version == b.Version && a.Peer != b.Peer {
				res.Conflicts = append(res.Conflicts, Conflict{Ours: a, Theirs: b, Winner: w})
			}
			out = append(out, w)
			i++
			j++
		}
	}
	if res.Changed {
		r.Entries = out
	}
	return res, nil
}

// Check verifies the invariants: seeds sorted and named, tokens strictly increasing inside
// the range with the first at its start (so the pieces cover it exactly), and every piece
// owned. Free is advisory (a merge may shrink a piece before its owner reports again), so
// readers clamp it to the piece size rather than reject it.
func (r *Ring) Check() error {
	if r.Range.Size() == 0 {
		return fmt.Errorf("%w: empty range", ErrInvalid)
	}
	for i, s := range r.Seeds {
		if s == mesh.UnknownPeerName || (i > 0 && r.Seeds[i-1] >= s) {
			return fmt.Errorf("%w: seeds not sorted and unique", ErrInvalid)
		}
	}
	if r.Empty() {
		return nil
	}
	if len(r.Seeds) == 0 {
		return fmt.Errorf("%w: owned ring without seeds", ErrInvalid)
	}
	if r.Entries[0].Token != r.Range.Start {
		return fmt.Errorf("%w: first token %s is not the range start %s", ErrInvalid, r.Entries[0].Token, r.Range.Start)
	}
	for i, e := range r.Entries {
		if i > 0 && r.Entries[i-1].Token >= e.Token {
			return fmt.Errorf("%w: token %s out of order", ErrInvalid, e.Token)
		}
		if !r.Range.Contains(e.Token) {
			return fmt.Errorf("%w: token %s outside %v", ErrInvalid, e.Token, r.Range)
		}
		if e.Peer == mesh.UnknownPeerName {
			return fmt.Errorf("%w: token %s has no owner", ErrInvalid, e.Token)
		}
	}
	return nil
}
