package mesh

// Peer entries: what the mesh knows about each peer, and the rule that merges two copies.

import (
	"cmp"
	"hash/fnv"
	"slices"
)

// connSummary is one connection as its owning peer reports it.
type connSummary struct {
	Name        PeerName
	Addr        string // remote TCP address as seen by the reporting peer
	Outbound    bool
	Established bool
}

// peerEntry is everything the mesh knows about one peer. Only the peer itself changes its
// entry; everyone else keeps the newest copy (see newerThan). A placeholder (UID 0,
// Version 0) stands for a peer that is only referenced by someone's connection list.
type peerEntry struct {
	Name     PeerName
	NickName string
	UID      uint64
	Version  uint64
	Started  uint64 // incarnation start, unix microseconds: decides who yields on a name collision
	Conns    []connSummary
	hash     uint64
}

// newerThan is the merge rule: a higher version wins; at equal versions the larger UID
// wins, so two incarnations that reached the same version still converge to one answer.
func (e *peerEntry) newerThan(o *peerEntry) bool {
	if o == nil {
		return true
	}
	if e.Version != o.Version {
		return e.Version > o.Version
	}
	return e.UID > o.UID
}

func (e *peerEntry) conn(name PeerName) *connSummary {
	i, ok := connIndex(e.Conns, name)
	if !ok {
		return nil
	}
	return &e.Conns[i]
}

// connIndex finds name in conns, which are sorted by name, as slices.BinarySearch does.
func connIndex(conns []connSummary, name PeerName) (int, bool) {
	return slices.BinarySearchFunc(conns, name, func(c connSummary, n PeerName) int { return cmp.Compare(c.Name, n) })
}

// digestHash identifies (name, uid, version); XOR of all of them is the topology hash two
// neighbours compare before exchanging anything bigger.
func (e *peerEntry) digestHash() uint64 {
	var w wbuf
	w.name(e.Name)
	w.u64(e.UID)
	w.u64(e.Version)
	h := fnv.New64a()
	h.Write(w.b)
	return h.Sum64()
}
