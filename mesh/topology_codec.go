package mesh

// The wire codec of the topology protocol's messages: peer entries, updates, digests, name
// lists and topology hashes. The decoders read untrusted bytes through rbuf, which bounds
// every count and length (fuzzed by FuzzDecodeTopology and FuzzGossipMessage).

import (
	"cmp"
	"fmt"
	"slices"
)

func encodeEntry(w *wbuf, e *peerEntry) {
	w.name(e.Name)
	w.u64(e.UID)
	w.uvarint(e.Version)
	w.uvarint(e.Started)
	w.str8(e.NickName)
	w.uvarint(uint64(len(e.Conns)))
	for _, c := range e.Conns {
		w.name(c.Name)
		var f byte
		if c.Outbound {
			f |= 1
		}
		if c.Established {
			f |= 2
		}
		w.u8(f)
		w.str8(c.Addr)
	}
}

func decodeEntry(r *rbuf) *peerEntry {
	e := &peerEntry{}
	e.Name = r.name("peer name")
	e.UID = r.u64("uid")
	e.Version = r.uvarint("version")
	e.Started = r.uvarint("started")
	e.NickName = r.str8("nickname", maxNickLen)
	n := r.count("connections", maxConnsPerPeer, 8)
	if r.err != nil {
		return nil
	}
	e.Conns = make([]connSummary, 0, n)
	for range n {
		var c connSummary
		c.Name = r.name("connection peer")
		f := r.u8("connection flags")
		c.Outbound = f&1 != 0
		c.Established = f&2 != 0
		c.Addr = r.str8("connection address", maxAddrLen)
		if r.err != nil {
			return nil
		}
		if f&^3 != 0 {
			r.fail("connection flags")
			return nil
		}
		e.Conns = append(e.Conns, c)
	}
	if e.Name == UnknownPeerName {
		r.fail("peer name (zero)")
		return nil
	}
	// Sorted, duplicate-free connection lists are what lookups and route BFS rely on.
	slices.SortFunc(e.Conns, func(a, b connSummary) int { return cmp.Compare(a.Name, b.Name) })
	e.Conns = slices.CompactFunc(e.Conns, func(a, b connSummary) bool { return a.Name == b.Name })
	e.hash = e.digestHash()
	return e
}

// encodeUpdate packs entries into messages of at most maxUpdateChunk bytes each
// (a single oversized entry still gets its own message).
func encodeUpdate(entries []*peerEntry, prefix []byte) [][]byte {
	var out [][]byte
	var body wbuf
	n := 0
	flush := func() {
		if n == 0 {
			return
		}
		var w wbuf
		w.b = append(w.b, prefix...)
		w.uvarint(uint64(n))
		w.b = append(w.b, body.b...)
		out = append(out, w.b)
		body.b, n = nil, 0
	}
	for _, e := range entries {
		var one wbuf
		encodeEntry(&one, e)
		if n > 0 && len(body.b)+len(one.b) > maxUpdateChunk {
			flush()
		}
		body.b = append(body.b, one.b...)
		n++
	}
	flush()
	return out
}

func decodeUpdate(b []byte) ([]*peerEntry, error) {
	r := rbuf{b: b}
	n := r.count("peer entries", maxPeers, 24)
	if r.err != nil {
		return nil, r.err
	}
	out := make([]*peerEntry, 0, n)
	for range n {
		e := decodeEntry(&r)
		if r.err != nil {
			return nil, fmt.Errorf("decode topology update: %w", r.err)
		}
		out = append(out, e)
	}
	if err := r.end("topology update"); err != nil {
		return nil, err
	}
	return out, nil
}

type digestItem struct {
	Name    PeerName
	UID     uint64
	Version uint64
}

func encodeDigest(items []digestItem) []byte {
	var w wbuf
	w.uvarint(uint64(len(items)))
	for _, d := range items {
		w.name(d.Name)
		w.u64(d.UID)
		w.uvarint(d.Version)
	}
	return w.b
}

func decodeDigest(b []byte) ([]digestItem, error) {
	r := rbuf{b: b}
	n := r.count("digest items", maxPeers, 15)
	out := make([]digestItem, 0, n)
	for range n {
		d := digestItem{Name: r.name("digest name"), UID: r.u64("digest uid"), Version: r.uvarint("digest version")}
		if r.err != nil {
			break
		}
		out = append(out, d)
	}
	if err := r.end("topology digest"); err != nil {
		return nil, err
	}
	return out, nil
}

func encodeNames(names []PeerName) []byte {
	var w wbuf
	w.uvarint(uint64(len(names)))
	for _, n := range names {
		w.name(n)
	}
	return w.b
}

func decodeNames(b []byte) ([]PeerName, error) {
	r := rbuf{b: b}
	n := r.count("names", maxPeers, 6)
	out := make([]PeerName, 0, n)
	for range n {
		out = append(out, r.name("name"))
	}
	if err := r.end("name list"); err != nil {
		return nil, err
	}
	return out, nil
}

func encodeHash(h uint64, count int) []byte {
	var w wbuf
	w.u64(h)
	w.uvarint(uint64(count))
	return w.b
}

func decodeHash(b []byte) (uint64, int, error) {
	r := rbuf{b: b}
	h := r.u64("topology hash")
	n := r.count("peer count", maxPeers, 0)
	if err := r.end("topology hash"); err != nil {
		return 0, 0, err
	}
	return h, n, nil
}
