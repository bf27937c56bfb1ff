package mesh

import (
	"fmt"
	"hash/fnv"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"time"
)

// topo is the topology protocol as a state machine without I/O: the Router (and the
// simulation) feed it connection changes, received messages and timer ticks, and it emits
// messages through send. It is not safe for concurrent use; its owner serialises calls.
//
// How updates spread, and why it stays cheap at scale (Weave sent the full O(N²) topology
// on changes, mesh#108):
//   - A change of our own connections bumps our entry's version; after a short coalescing
//     delay only our entry travels, along our broadcast tree, so each peer gets it once.
//   - Two neighbours that may differ (new connection, periodic check with a mismatching
//     8-byte topology hash) exchange a digest (name, uid, version per peer) and push each
//     other only the entries the other lacks.
//   - Entries learned from such a push are relayed to our other neighbours, who relay them
//     further only if they were new to them: repairs cost what was missing, not N².
type topo struct {
	cfg topoConfig

	peers     map[PeerName]*peerEntry
	self      *peerEntry
	started   uint64
	hash      uint64 // XOR of digestHash over non-placeholder entries
	entries   int    // number of non-placeholder entries
	selfDirty bool
	gcDue     bool // an entry changed: some peer may have become unreachable
	// pending holds entries learned by a direct push, to relay to other neighbours at the
	// next flush, with the neighbour they came from.
	pending map[PeerName]PeerName

	rt      *routeTable
	rtDirty bool
	rtAt    time.Time

	seen     seenSet
	mismatch map[PeerName]time.Time // neighbour -> first hash mismatch not yet repaired
	// selfClaimLogged: when an entry claiming our name was last logged (at most one line a
	// minute: the entries come from the network).
	selfClaimLogged time.Time

	stats topoStats
}

type topoStats struct {
	Malformed       uint64
	BroadcastsSent  uint64
	BroadcastDups   uint64
	EntriesApplied  uint64
	DigestsSent     uint64
	UpdatesSent     uint64
	HashChecksSent  uint64
	RouteRecomputes uint64
	FutureVersions  uint64
	// SelfClaims: entries with our name and another UID (an old incarnation of ours, a
	// clone, or a forgery).
	SelfClaims uint64
}

// maxVersionAhead bounds how far ahead of our clock a peer's version may be.
const maxVersionAhead = 365 * 24 * time.Hour

type topoConfig struct {
	Self       PeerName
	UID        uint64
	NickName   string
	Now        func() time.Time
	RouteDelay time.Duration
	// RepairDelay: how long a topology hash mismatch with a neighbour must persist
	// before a digest exchange repairs it.
	RepairDelay time.Duration
	Rand        *rand.Rand
	Log         *slog.Logger
	// Send delivers msg (tag byte first) to a directly connected neighbour. It must not
	// block and must not call back into the topology.
	Send func(to PeerName, msg []byte)
}

// selfClaimLogEvery rate-limits the log of entries claiming our name.
const selfClaimLogEvery = time.Minute

func newTopo(cfg topoConfig) *topo {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	now := uint64(cfg.Now().UnixMicro())
	self := &peerEntry{Name: cfg.Self, NickName: cfg.NickName, UID: cfg.UID, Version: now, Started: now}
	self.hash = self.digestHash()
	t := &topo{
		cfg:      cfg,
		peers:    map[PeerName]*peerEntry{cfg.Self: self},
		self:     self,
		started:  now,
		hash:     self.hash,
		entries:  1,
		pending:  map[PeerName]PeerName{},
		rtDirty:  true,
		seen:     newSeenSet(8192),
		mismatch: map[PeerName]time.Time{},
	}
	return t
}

// replaceEntry swaps in e for e.Name keeping the topology hash current.
func (t *topo) replaceEntry(e *peerEntry) {
	if old := t.peers[e.Name]; old != nil && old.Version != 0 {
		t.hash ^= old.hash
		t.entries--
	}
	t.peers[e.Name] = e
	if e.Version != 0 {
		t.hash ^= e.hash
		t.entries++
	}
	for _, c := range e.Conns {
		if _, ok := t.peers[c.Name]; !ok {
			t.peers[c.Name] = &peerEntry{Name: c.Name}
		}
	}
	t.rtDirty = true
	t.gcDue = true
}

func (t *topo) bumpSelf() {
	t.hash ^= t.self.hash
	t.self.Version = max(t.self.Version+1, uint64(t.cfg.Now().UnixMicro()))
	t.self.hash = t.self.digestHash()
	t.hash ^= t.self.hash
	t.selfDirty = true
	t.rtDirty = true
}

// notePeer records what a handshake told us about a neighbour, so routes and status can
// name it before its own entry arrives.
func (t *topo) notePeer(name PeerName, nick string, uid uint64) {
	if e, ok := t.peers[name]; ok {
		if e.Version == 0 {
			e.NickName, e.UID = nick, uid
		}
		return
	}
	t.peers[name] = &peerEntry{Name: name, NickName: nick, UID: uid}
	t.rtDirty = true
}

// setConn adds or updates one of our own connections.
func (t *topo) setConn(c connSummary) {
	if cur := t.self.conn(c.Name); cur != nil {
		if *cur == c {
			return
		}
		*cur = c
	} else {
		i, _ := connIndex(t.self.Conns, c.Name)
		t.self.Conns = slices.Insert(t.self.Conns, i, c)
	}
	if _, ok := t.peers[c.Name]; !ok {
		t.peers[c.Name] = &peerEntry{Name: c.Name}
	}
	t.bumpSelf()
}

// delConn removes one of our own connections.
func (t *topo) delConn(name PeerName) {
	i, ok := connIndex(t.self.Conns, name)
	if !ok {
		return
	}
	t.self.Conns = slices.Delete(t.self.Conns, i, i+1)
	t.bumpSelf()
	t.gcDue = true
}

func (t *topo) neighbours() []PeerName {
	out := make([]PeerName, len(t.self.Conns))
	for i, c := range t.self.Conns {
		out[i] = c.Name
	}
	return out
}

// apply merges one received entry and reports whether it was new to us.
func (t *topo) apply(e *peerEntry) bool {
	if e.Version == 0 {
		return false
	}
	// Versions follow their owner's clock. One far in the future is forged or broken, and
	// accepting it would let that entry win forever (its owner could not go above it).
	if e.Version > uint64(t.cfg.Now().Add(maxVersionAhead).UnixMicro()) {
		t.stats.FutureVersions++
		return false
	}
	if e.Name == t.self.Name {
		if e.UID == t.self.UID {
			return false
		}
		t.selfClaim(e)
		// An older incarnation of us (or another claimant) must never win: go above it.
		// Even a forged version far ahead is followed: peers accepted it, so they accept
		// ours just above it, and only that takes our entry back everywhere.
		if e.Version >= t.self.Version {
			t.hash ^= t.self.hash
			t.self.Version = e.Version
			t.hash ^= t.self.hash
			t.bumpSelf()
		}
		return false
	}
	if !e.newerThan(t.peers[e.Name]) {
		return false
	}
	t.replaceEntry(e)
	t.stats.EntriesApplied++
	return true
}

// selfClaim notes an entry with our name and another UID. An old incarnation of ours has
// versions from before our start; anything later is another peer claiming our name. Either
// way it is only logged: gossip is not proof of anything, and stopping on it would let any
// peer (or anyone who can reach one) stop us. Connections under our name are refused.
func (t *topo) selfClaim(e *peerEntry) {
	t.stats.SelfClaims++
	if e.Version <= t.started {
		return
	}
	now := t.cfg.Now()
	if now.Sub(t.selfClaimLogged) < selfClaimLogEvery {
		return
	}
	t.selfClaimLogged = now
	t.cfg.Log.Warn("name in use: topology gossip claims our name with another uid (a clone of this host, or a forgery); ignored",
		"peer", t.self.Name.String(), "our_uid", t.self.UID, "their_uid", e.UID, "their_nickname", e.NickName,
		"claims_total", t.stats.SelfClaims)
}

func (t *topo) send(to PeerName, tag byte, payload []byte) {
	msg := make([]byte, 0, 1+len(payload))
	msg = append(msg, tag)
	msg = append(msg, payload...)
	t.cfg.Send(to, msg)
}

func (t *topo) sendUpdate(to PeerName, entries []*peerEntry) {
	for _, m := range encodeUpdate(entries, []byte{tagTopoUpdate}) {
		t.stats.UpdatesSent++
		t.cfg.Send(to, m)
	}
}

// handle processes one topology message from neighbour from.
func (t *topo) handle(from PeerName, msg []byte) error {
	if len(msg) == 0 {
		return fmt.Errorf("%w: empty", ErrMalformed)
	}
	err := t.handle1(from, msg[0], msg[1:])
	if err != nil {
		t.stats.Malformed++
	}
	return err
}

func (t *topo) handle1(from PeerName, tag byte, p []byte) error {
	switch tag {
	case tagTopoUpdate:
		entries, err := decodeUpdate(p)
		if err != nil {
			return fmt.Errorf("topology update from %s: %w", from, err)
		}
		for _, e := range entries {
			// The sender's own entry is not relayed: its owner broadcasts it along its tree.
			if t.apply(e) && e.Name != from {
				t.pending[e.Name] = from
			}
		}
	case tagTopoBroadcast:
		r := rbuf{b: p}
		origin := r.name("broadcast origin")
		if r.err != nil {
			return fmt.Errorf("topology broadcast from %s: %w", from, r.err)
		}
		entries, err := decodeUpdate(r.rest())
		if err != nil {
			return fmt.Errorf("topology broadcast from %s: %w", from, err)
		}
		if !t.seen.add(origin, p) {
			t.stats.BroadcastDups++
			return nil
		}
		for _, e := range entries {
			t.apply(e)
		}
		for _, hop := range t.relayRoutes().broadcastHops(origin, true) {
			if hop != from && hop != origin {
				t.send(hop, tagTopoBroadcast, p)
			}
		}
	case tagTopoDigest:
		items, err := decodeDigest(p)
		if err != nil {
			return fmt.Errorf("topology digest from %s: %w", from, err)
		}
		t.answerDigest(from, items)
	case tagTopoRequest:
		names, err := decodeNames(p)
		if err != nil {
			return fmt.Errorf("topology request from %s: %w", from, err)
		}
		var out []*peerEntry
		for _, n := range names {
			if e := t.peers[n]; e != nil && e.Version != 0 {
				out = append(out, e)
			}
		}
		t.sendUpdate(from, out)
	case tagTopoHash:
		h, n, err := decodeHash(p)
		if err != nil {
			return fmt.Errorf("topology hash from %s: %w", from, err)
		}
		if h == t.hash && n == t.countEntries() {
			delete(t.mismatch, from)
			return nil
		}
		// A mismatch is usually an update still on its way; only one that is still there
		// at the neighbour's next check is repaired with a digest (O(N) bytes).
		now := t.cfg.Now()
		first, seen := t.mismatch[from]
		if !seen {
			t.mismatch[from] = now
			return nil
		}
		if now.Sub(first) >= t.cfg.RepairDelay {
			t.mismatch[from] = now
			t.sendDigest(from)
		}
	default:
		return fmt.Errorf("%w: unknown topology tag %d", ErrMalformed, tag)
	}
	return nil
}

// countEntries is the number of real (non-placeholder) entries, ours included.
func (t *topo) countEntries() int { return t.entries }

func (t *topo) sendDigest(to PeerName) {
	items := make([]digestItem, 0, len(t.peers))
	for _, e := range t.peers {
		if e.Version != 0 {
			items = append(items, digestItem{Name: e.Name, UID: e.UID, Version: e.Version})
		}
	}
	t.stats.DigestsSent++
	t.send(to, tagTopoDigest, encodeDigest(items))
}

// answerDigest pushes what the digest's sender lacks and asks for what it has newer.
func (t *topo) answerDigest(from PeerName, items []digestItem) {
	theirs := make(map[PeerName]bool, len(items))
	var want []PeerName
	for _, d := range items {
		theirs[d.Name] = true
		cur := t.peers[d.Name]
		probe := peerEntry{Version: d.Version, UID: d.UID}
		if d.Version != 0 && d.Name != t.self.Name && probe.newerThan(cur) {
			want = append(want, d.Name)
		}
	}
	var push []*peerEntry
	for _, e := range t.peers {
		if e.Version == 0 {
			continue
		}
		if !theirs[e.Name] {
			push = append(push, e)
		}
	}
	for _, d := range items {
		if e := t.peers[d.Name]; e != nil && e.Version != 0 && e.newerThan(&peerEntry{Version: d.Version, UID: d.UID}) {
			push = append(push, e)
		}
	}
	if len(push) > 0 {
		t.sendUpdate(from, push)
	}
	if len(want) > 0 {
		t.send(from, tagTopoRequest, encodeNames(want))
	}
}

// connUp starts the exchange with a new neighbour; the lower name sends its digest, the
// other pushes and requests, so nothing crosses twice.
func (t *topo) connUp(remote PeerName) {
	if t.self.Name < remote {
		t.sendDigest(remote)
	}
}

// dirty reports whether flush has something to send.
func (t *topo) dirty() bool { return t.selfDirty || len(t.pending) > 0 || t.gcDue }

// flush sends our own entry along our broadcast tree if it changed, and relays entries
// learned by push to the neighbours they did not come from.
func (t *topo) flush() {
	nbs := t.neighbours()
	if t.selfDirty {
		t.selfDirty = false
		var w wbuf
		w.name(t.self.Name)
		for _, m := range encodeUpdate([]*peerEntry{t.self}, w.b) {
			t.seen.add(t.self.Name, m)
			for _, nb := range nbs {
				t.stats.BroadcastsSent++
				t.send(nb, tagTopoBroadcast, m)
			}
		}
	}
	if len(t.pending) > 0 {
		for _, nb := range nbs {
			var out []*peerEntry
			for name, src := range t.pending {
				if src != nb && name != nb {
					if e := t.peers[name]; e != nil {
						out = append(out, e)
					}
				}
			}
			if len(out) > 0 {
				t.sendUpdate(nb, out)
			}
		}
		clear(t.pending)
	}
}

// gossipTick sends our topology hash to a few neighbours; a mismatch starts a digest
// exchange that repairs whatever a broadcast missed.
func (t *topo) gossipTick() {
	msg := encodeHash(t.hash, t.countEntries())
	for _, nb := range t.randomNeighbours(UnknownPeerName) {
		t.stats.HashChecksSent++
		t.send(nb, tagTopoHash, msg)
	}
}

// randomNeighbours picks min(2·log2(peers), neighbours) neighbours without replacement,
// favouring those that route to more destinations (bottleneck links), as Weave did.
func (t *topo) randomNeighbours(exclude PeerName) []PeerName {
	rt := t.routes()
	weight := map[PeerName]int{}
	for _, c := range t.self.Conns {
		if c.Name != exclude {
			weight[c.Name] = 1
		}
	}
	for _, hop := range rt.unicastAll {
		if _, ok := weight[hop]; ok {
			weight[hop]++
		}
	}
	k := int(math.Ceil(2 * math.Log2(float64(max(len(t.peers), 2)))))
	cands := make([]PeerName, 0, len(weight))
	for n := range weight {
		cands = append(cands, n)
	}
	slices.Sort(cands)
	if len(cands) <= k {
		return cands
	}
	out := make([]PeerName, 0, k)
	for len(out) < k {
		total := 0
		for _, n := range cands {
			total += weight[n]
		}
		x := t.cfg.Rand.IntN(total)
		for i, n := range cands {
			x -= weight[n]
			if x < 0 {
				out = append(out, n)
				cands = slices.Delete(cands, i, i+1)
				break
			}
		}
	}
	return out
}

// routes returns the current route snapshot, recomputing it if the topology changed and
// the last computation is at least RouteDelay old (storms of updates recompute once).
func (t *topo) routes() *routeTable {
	if t.rt == nil || (t.rtDirty && t.cfg.Now().Sub(t.rtAt) >= t.cfg.RouteDelay) {
		t.recompute()
	}
	return t.rt
}

// relayRoutes is routes for relaying a broadcast: the tree must reflect what we just
// applied (as every other relay's will), or relays on old and new views disagree and some
// peers miss the broadcast. It still coalesces, over a much shorter window.
func (t *topo) relayRoutes() *routeTable {
	if t.rt == nil || (t.rtDirty && t.cfg.Now().Sub(t.rtAt) >= t.cfg.RouteDelay/20) {
		t.recompute()
	}
	return t.rt
}

func (t *topo) recompute() {
	t.rt = newRouteTable(t.self.Name, t.peers)
	t.rtDirty = false
	t.rtAt = t.cfg.Now()
	t.stats.RouteRecomputes++
}

// gc removes peers no longer reachable from us over any reported connection and returns
// their names.
func (t *topo) gc() []PeerName {
	t.gcDue = false
	reach := make(map[PeerName]bool, len(t.peers))
	reach[t.self.Name] = true
	queue := []PeerName{t.self.Name}
	for len(queue) > 0 {
		e := t.peers[queue[0]]
		queue = queue[1:]
		for _, c := range e.Conns {
			if _, known := t.peers[c.Name]; known && !reach[c.Name] {
				reach[c.Name] = true
				queue = append(queue, c.Name)
			}
		}
	}
	if len(reach) == len(t.peers) {
		return nil
	}
	var gone []PeerName
	for n, e := range t.peers {
		if reach[n] {
			continue
		}
		if e.Version != 0 {
			t.hash ^= e.hash
			t.entries--
		}
		delete(t.peers, n)
		delete(t.pending, n)
		delete(t.mismatch, n)
		gone = append(gone, n)
	}
	slices.Sort(gone)
	t.rtDirty = true
	return gone
}

// seenSet remembers recent broadcasts (origin + payload hash) so a broadcast that loops
// while views disagree is relayed once, not forever. Bounded: oldest keys are forgotten.
type seenSet struct {
	m    map[uint64]struct{}
	ring []uint64
	next int
}

func newSeenSet(n int) seenSet {
	return seenSet{m: make(map[uint64]struct{}, n), ring: make([]uint64, n)}
}

// add returns false if the key was already present.
func (s *seenSet) add(origin PeerName, payload []byte) bool {
	h := fnv.New64a()
	b := origin.Bytes()
	h.Write(b[:])
	h.Write(payload)
	k := h.Sum64()
	if _, ok := s.m[k]; ok {
		return false
	}
	if old := s.ring[s.next]; old != 0 {
		delete(s.m, old)
	}
	s.ring[s.next] = k
	s.next = (s.next + 1) % len(s.ring)
	s.m[k] = struct{}{}
	return true
}
