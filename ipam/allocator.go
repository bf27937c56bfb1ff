package ipam

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weavemesh/weave/ipam/addr"
	"github.com/weavemesh/weave/ipam/paxos"
	"github.com/weavemesh/weave/ipam/ring"
	"github.com/weavemesh/weave/ipam/space"
	"github.com/weavemesh/weave/mesh"
)

// Allocator is one peer's IPAM. All state sits behind one mutex; the pure types (ring,
// space, paxos) do the reasoning, the Allocator does locking, persistence and messaging.
// Messages are queued while the lock is held and sent after it is released, so a gossip
// implementation that calls back synchronously cannot deadlock.
type Allocator struct {
	cfg      resolved
	log      *slog.Logger
	store    Store
	ownStore bool

	mu          sync.Mutex
	ring        *ring.Ring
	space       *space.Space
	node        *paxos.Node // nil unless we take part in consensus
	proposing   bool
	lastPropose time.Time
	lastLearned time.Time // when Paxos last told us something new
	allocs      map[Key][]netip.Prefix
	byAddr      map[netip.Addr]Key
	dirtyRing   bool
	dirtyPaxos  bool
	dirtyAllocs map[Key][]netip.Prefix
	changed     chan struct{} // closed and replaced whenever waiters should look again
	gossip      mesh.Gossip
	outbox      []outMsg
	spaceReqs   map[addr.Range]request
	denied      map[addr.Range]map[mesh.PeerName]bool
	claimReqs   map[addr.Addr]time.Time
	wanted      map[addr.Addr]wantedClaim
	claimDenied map[addr.Addr]mesh.PeerName
	conflicts   map[addr.Addr]string
	ringErr     string
	ringErrAt   time.Time
	waitReason  string
	lastRingTx  time.Time
	lastReply   map[mesh.PeerName]time.Time
	// synced is false after a restart with a saved ring that names other peers, until we
	// hear the ring from one of them: our space may have been taken over (rmpeer, reclaim)
	// while we were away, and handing it out again would duplicate addresses.
	synced    bool
	startedAt time.Time
	// awaitRings, after adopting a ring on rejoining with a lost database, lists the
	// owners we have not heard our ring from yet: the first ring heard may lack changes
	// we made before the loss (a grant) that only their recipient knows. Allocation waits
	// for every reachable one of them, at most two ticks (synced stays false meanwhile).
	awaitRings map[mesh.PeerName]bool
	// adopting is set by ForgetRing, or at start by a membership record naming other
	// owners while the database has no ring: wait for a peer's ring, never make one.
	adopting bool
	// rejoining: adopting because the database was lost (the status says so).
	rejoining bool
	// member is the membership record last written (memberSaved: in this run).
	member      memberRecord
	memberSaved bool
	closed      bool

	rnd *rand.Rand // jitter; seeded from our identity, so simulations replay

	pending atomic.Int64
	stats   struct {
		conflicts, rejected, badMessages, reclaimed, persistErrors, badRecords, restored atomic.Uint64
	}

	done chan struct{}
	wg   sync.WaitGroup
}

type request struct {
	peer mesh.PeerName
	at   time.Time
}

type wantedClaim struct {
	key    Key
	prefix netip.Prefix
}

type outMsg struct {
	broadcast bool
	dst       mesh.PeerName
	data      *gossipData
	bytes     []byte
}

// New opens the store, loads what was saved and starts the ticker. Register the allocator
// (it is a mesh.Gossiper) on channel ChannelName and pass the result to SetGossip.
func New(c Config) (*Allocator, error) {
	cfg, err := c.resolve()
	if err != nil {
		return nil, err
	}
	a := &Allocator{
		cfg:         cfg,
		log:         cfg.Logger.With("component", "ipam"),
		ring:        ring.New(cfg.rng),
		space:       space.New(),
		allocs:      map[Key][]netip.Prefix{},
		byAddr:      map[netip.Addr]Key{},
		dirtyAllocs: map[Key][]netip.Prefix{},
		changed:     make(chan struct{}),
		spaceReqs:   map[addr.Range]request{},
		denied:      map[addr.Range]map[mesh.PeerName]bool{},
		claimReqs:   map[addr.Addr]time.Time{},
		wanted:      map[addr.Addr]wantedClaim{},
		claimDenied: map[addr.Addr]mesh.PeerName{},
		conflicts:   map[addr.Addr]string{},
		lastReply:   map[mesh.PeerName]time.Time{},
		done:        make(chan struct{}),
		rnd:         rand.New(rand.NewPCG(uint64(cfg.Name), cfg.UID)),
	}
	if cfg.mode == initConsensus {
		a.node = paxos.NewNode(paxos.NodeID{Name: cfg.Name, UID: cfg.UID}, cfg.quorum)
	}
	if err := a.openAndLoad(); err != nil {
		return nil, err
	}
	if cfg.TickInterval >= 0 {
		a.wg.Add(1)
		go a.ticker()
	}
	return a, nil
}

// openAndLoad opens the store and loads it. A corrupt or foreign database is an error,
// unless DiscardIncompatibleDB says to move it aside and start afresh.
func (a *Allocator) openAndLoad() error {
	switch {
	case a.cfg.Store != nil:
		a.store = a.cfg.Store
		return a.load()
	case a.cfg.DBPath == "":
		a.store = &MemStore{}
		return a.load()
	}
	err := a.openBoltAndLoad()
	if err != nil && a.cfg.DiscardIncompatibleDB && (errors.Is(err, ErrCorruptDB) || errors.Is(err, ErrForeignDB)) {
		aside := fmt.Sprintf("%s.bad-%d", a.cfg.DBPath, a.cfg.Now().Unix())
		a.log.Warn("moving incompatible IPAM database aside and starting afresh", "err", err, "moved_to", aside)
		if rerr := os.Rename(a.cfg.DBPath, aside); rerr != nil {
			return fmt.Errorf("%w (and moving it aside failed: %v)", err, rerr)
		}
		a.ring = ring.New(a.cfg.rng)
		a.space = space.New()
		clear(a.allocs)
		clear(a.byAddr)
		clear(a.dirtyAllocs)
		err = a.openBoltAndLoad()
	}
	return err
}

func (a *Allocator) openBoltAndLoad() error {
	s, err := OpenBolt(a.cfg.DBPath, a.cfg.Name, a.cfg.Range)
	if err != nil {
		return err
	}
	a.store, a.ownStore = s, true
	if err := a.load(); err != nil {
		s.Close()
		return err
	}
	return nil
}

func (a *Allocator) load() error {
	snap, err := a.store.Load()
	if err != nil {
		return fmt.Errorf("load ipam state: %w", err)
	}
	if snap.Ring != nil {
		r, err := ring.Decode(snap.Ring)
		if err != nil {
			return fmt.Errorf("load ipam ring: %w: %w", ErrCorruptDB, err)
		}
		if r.Range != a.cfg.rng {
			return fmt.Errorf("load ipam ring: %w: saved range %v, configured %v", ErrForeignDB, r.Range, a.cfg.rng)
		}
		a.ring = r
		// Only ForgetRing saves an empty ring: keep waiting for a peer's.
		a.adopting = r.Empty()
	}
	if snap.Paxos != nil && !a.adopting && a.node != nil && a.ring.Empty() {
		n, err := decodeElector(snap.Paxos, a.node.Quorum())
		if err != nil {
			return fmt.Errorf("load ipam consensus state: %w: %w", ErrCorruptDB, err)
		}
		if n.ID().Name != a.cfg.Name {
			return fmt.Errorf("load ipam consensus state: %w: elector %v is not us", ErrForeignDB, n.ID().Name)
		}
		a.node = n
		a.proposing = true // we were in an election: carry on
	}
	for _, k := range slices.SortedFunc(maps.Keys(snap.Allocs), compareKeys) {
		for _, p := range snap.Allocs[k] {
			if other, dup := a.byAddr[p.Addr()]; dup {
				a.log.Warn("saved allocation duplicates another; keeping the first", "addr", p, "container", k, "first", other)
				continue
			}
			a.record(k, p)
			if ad, ok := addr.FromNetip(p.Addr()); ok && a.cfg.rng.Contains(ad) {
				a.space.Take(ad)
			}
		}
	}
	clear(a.dirtyAllocs)
	a.restoreInUse()
	if err := a.checkMembership(); err != nil {
		return err
	}
	a.startedAt = a.cfg.Now()
	owners := a.ring.Owners()
	a.synced = a.ring.Empty() || (len(owners) == 1 && owners[0] == a.cfg.Name)
	if a.ring.Empty() && a.cfg.mode == initSeed && !a.adopting {
		if err := a.ring.Seed(a.cfg.seeds); err != nil {
			return fmt.Errorf("seed ring: %w", err)
		}
		a.log.Info("ring seeded", "seeds", a.cfg.seeds)
	}
	if !a.ring.Empty() {
		a.ringChanged()
	}
	if err := a.commit(); err != nil {
		return fmt.Errorf("save ipam state: %w", err)
	}
	a.log.Info("ipam started", "range", a.cfg.Range, "ring_ready", !a.ring.Empty(), "allocations", len(a.allocs), "owned", a.space.NumOwned())
	return nil
}

// restoreInUse records the addresses the host's containers hold that the database does not
// know (it was lost or emptied), exactly as saved allocations are: used in our space, or
// re-claimed from their owner once the ring is known. Nothing can be allocated before.
func (a *Allocator) restoreInUse() {
	keys := slices.SortedFunc(maps.Keys(a.cfg.InUse), compareKeys)
	restored := 0
	for _, k := range keys {
		if err := k.valid(); err != nil {
			a.log.Warn("ignoring an address in use with a bad key", "err", err)
			continue
		}
		for _, p := range a.cfg.InUse[k] {
			if !p.IsValid() || !p.Addr().Unmap().Is4() {
				a.log.Warn("ignoring an address in use that is not IPv4", "container", k, "addr", p)
				continue
			}
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits())
			if other, dup := a.byAddr[p.Addr()]; dup {
				if other != k {
					a.log.Warn("address in use by a container is allocated to another one here", "addr", p, "container", k, "allocated_to", other)
				}
				continue
			}
			a.record(k, p)
			if ad, ok := addr.FromNetip(p.Addr()); ok && a.cfg.rng.Contains(ad) {
				a.space.Take(ad)
			}
			restored++
		}
	}
	if restored > 0 {
		a.stats.restored.Add(uint64(restored))
		a.log.Warn("the database did not know addresses this host's containers use; recorded them again", "addresses", restored)
	}
}

func compareKeys(x, y Key) int {
	if c := strings.Compare(x.ID, y.ID); c != 0 {
		return c
	}
	return strings.Compare(x.Iface, y.Iface)
}

// checkMembership decides, when the database has no ring, whether we belonged to one
// before: then the ring still exists at its other owners, and making a new one (consensus
// with a quorum of one, or a seed) would hand out their containers' addresses again.
func (a *Allocator) checkMembership() error {
	if a.cfg.MemberPath == "" || !a.ring.Empty() || a.adopting || a.cfg.mode == initObserver {
		return nil
	}
	m, exists, err := readMemberRecord(a.cfg.MemberPath)
	switch {
	case err != nil && exists:
		// Unreadable but there: we did belong to a ring. Waiting is safe; guessing is not.
		a.stats.badRecords.Add(1)
		a.log.Error("membership record unreadable; waiting for a peer's ring instead of making one", "err", err,
			"repair", "remove "+a.cfg.MemberPath+" only if every peer of the old ring lost its ipam.db")
		a.adopting, a.rejoining = true, true
	case err != nil:
		return err
	case !exists:
	case m.rng != a.cfg.Range:
		a.log.Info("membership record is for another range; not rejoining it", "record_range", m.rng, "range", a.cfg.Range)
	case slices.ContainsFunc(m.owners, func(p mesh.PeerName) bool { return p != a.cfg.Name }):
		a.log.Warn("no ring in the database but this peer belonged to one: waiting to adopt it from a peer",
			"owners", len(m.owners), "record", a.cfg.MemberPath)
		a.adopting, a.rejoining = true, true
		a.member, a.memberSaved = m, true
	}
	return nil
}

// saveMembership keeps the membership record up to date with the ring's owners. It is
// written only when they change, and before the ring is committed.
func (a *Allocator) saveMembership() {
	if a.cfg.MemberPath == "" || a.ring.Empty() || a.cfg.mode == initObserver {
		return
	}
	m := memberRecord{rng: a.cfg.Range, owners: a.ring.Owners()}
	if a.memberSaved && a.member.rng == m.rng && slices.Equal(a.member.owners, m.owners) {
		return
	}
	if err := writeMemberRecord(a.cfg.MemberPath, m); err != nil {
		a.stats.persistErrors.Add(1)
		a.log.Error("saving the ipam membership record failed; will retry", "err", err)
		return
	}
	a.member, a.memberSaved = m, true
}

// SetGossip connects the allocator to the mesh channel it was registered on.
func (a *Allocator) SetGossip(g mesh.Gossip) {
	a.mu.Lock()
	a.gossip = g
	if !a.ring.Empty() {
		a.broadcastRing()
	}
	a.helloIfUnsynced()
	a.checkOrphans()
	a.unlock()
}

// unlock persists what changed, releases the lock, then sends the queued messages:
// whatever we announce is on disk first.
func (a *Allocator) unlock() {
	if err := a.commit(); err != nil {
		a.log.Error("saving ipam state failed; will retry", "err", err)
	}
	out, g := a.outbox, a.gossip
	a.outbox = nil
	a.mu.Unlock()
	if g == nil {
		return
	}
	for _, m := range out {
		if m.broadcast {
			g.GossipBroadcast(m.data)
		} else if err := g.GossipUnicast(m.dst, m.bytes); err != nil {
			a.log.Debug("unicast failed", "peer", m.dst, "err", err)
		}
	}
}

func (a *Allocator) commit() error {
	if !a.dirtyRing && !a.dirtyPaxos && len(a.dirtyAllocs) == 0 {
		return nil
	}
	c := Change{Allocs: a.dirtyAllocs}
	if a.dirtyRing {
		c.Ring = a.ring.Encode()
	}
	if a.dirtyPaxos && a.node != nil {
		c.Paxos = encodeElector(a.node)
	}
	if err := a.store.Commit(c); err != nil {
		a.stats.persistErrors.Add(1)
		return fmt.Errorf("commit ipam state: %w", err)
	}
	a.dirtyRing, a.dirtyPaxos = false, false
	clear(a.dirtyAllocs)
	return nil
}

func (a *Allocator) notify() {
	close(a.changed)
	a.changed = make(chan struct{})
}

func (a *Allocator) broadcastRing() {
	a.lastRingTx = a.cfg.Now()
	a.outbox = append(a.outbox, outMsg{broadcast: true, data: &gossipData{ring: a.ring.Clone()}})
}

// helloIfUnsynced asks every peer for its ring while we wait to learn whether our saved
// space is still ours, or while we wait to adopt one (our hello then carries an empty ring).
func (a *Allocator) helloIfUnsynced() {
	if (!a.synced && !a.ring.Empty()) || (a.adopting && a.ring.Empty()) {
		a.outbox = append(a.outbox, outMsg{broadcast: true, data: &gossipData{ring: a.ring.Clone(), hello: true}})
	}
}

func (a *Allocator) unicast(dst mesh.PeerName, b []byte) {
	a.outbox = append(a.outbox, outMsg{dst: dst, bytes: b})
}

func (a *Allocator) reachable(p mesh.PeerName) bool {
	return p == a.cfg.Name || a.cfg.Peers.IsReachable(p)
}

// record adds p to k's allocations.
func (a *Allocator) record(k Key, p netip.Prefix) {
	a.allocs[k] = append(a.allocs[k], p)
	a.byAddr[p.Addr()] = k
	a.dirtyAllocs[k] = slices.Clone(a.allocs[k])
}

// unrecord removes the allocation of address ip from k.
func (a *Allocator) unrecord(k Key, ip netip.Addr) {
	ps := slices.DeleteFunc(a.allocs[k], func(p netip.Prefix) bool { return p.Addr() == ip })
	if len(ps) == 0 {
		delete(a.allocs, k)
	} else {
		a.allocs[k] = ps
	}
	delete(a.byAddr, ip)
	a.dirtyAllocs[k] = slices.Clone(ps)
}

// ringChanged brings everything that depends on the ring up to date.
func (a *Allocator) ringChanged() {
	a.dirtyRing = true
	a.saveMembership()
	orphansBefore := a.countOrphans()
	a.space.SetOwned(a.ring.OwnedBy(a.cfg.Name))
	for ad, w := range a.wanted {
		if a.space.IsFree(ad) {
			a.space.Take(ad)
			a.record(w.key, w.prefix)
			delete(a.wanted, ad)
		}
	}
	if n := a.countOrphans(); n > orphansBefore {
		a.log.Warn("space we use was taken over by another peer; re-claiming the addresses in use", "addresses", n-orphansBefore)
	}
	a.reportFree()
	clear(a.denied)
	a.checkOrphans()
	a.notify()
}

func (a *Allocator) countOrphans() uint64 {
	var n uint64
	for _, r := range a.space.Orphans() {
		n += uint64(r.Size())
	}
	return n
}

// reportFree writes our free counts into our pieces (for donors' selection elsewhere).
func (a *Allocator) reportFree() {
	for _, pc := range a.ring.Pieces() {
		if pc.Peer == a.cfg.Name {
			if a.ring.SetFree(a.cfg.Name, pc.Token, a.space.FreeIn(pc.Range)) {
				a.dirtyRing = true
			}
		}
	}
}

func (a *Allocator) reportFreeAt(ad addr.Addr) {
	if pc, ok := a.ring.PieceAt(ad); ok && pc.Peer == a.cfg.Name {
		if a.ring.SetFree(a.cfg.Name, pc.Token, a.space.FreeIn(pc.Range)) {
			a.dirtyRing = true
		}
	}
}

// checkOrphans asks the owners of addresses we use but no longer own to give them back.
func (a *Allocator) checkOrphans() {
	if a.gossip == nil || a.ring.Empty() {
		return
	}
	now := a.cfg.Now()
	for _, r := range a.space.Orphans() {
		for ad := r.Start; ad < r.End; ad++ {
			if _, bad := a.conflicts[ad]; bad {
				continue
			}
			if at, ok := a.claimReqs[ad]; ok && now.Sub(at) < 2*a.cfg.tick {
				continue
			}
			owner := a.ring.Owner(ad)
			if owner == mesh.UnknownPeerName || owner == a.cfg.Name || !a.reachable(owner) {
				continue
			}
			a.claimReqs[ad] = now
			a.unicast(owner, encodeClaim(ad))
		}
	}
}

// mergeRing folds in a ring from src ("" when it came by periodic gossip). A ring that
// cannot be merged is refused and reported; it never breaks the connection.
func (a *Allocator) mergeRing(r *ring.Ring, src string) bool {
	wasEmpty := a.ring.Empty()
	res, err := a.ring.Merge(r)
	if err == nil && src != "" && !r.Empty() && !a.synced {
		if a.awaitRings == nil {
			a.synced = true
		} else if p, perr := mesh.ParsePeerName(src); perr == nil {
			delete(a.awaitRings, p)
		}
		a.notify()
	}
	if err != nil {
		a.stats.rejected.Add(1)
		msg := err.Error()
		if errors.Is(err, ring.ErrSeedMismatch) || errors.Is(err, ring.ErrRangeMismatch) {
			msg += "; the peers on one side must give up their ring: on each of them stop the router, remove ipam.db" +
				" from its state dir and launch it again; it re-learns the ring from its peers, re-claims the addresses" +
				" its containers use and reports any clash"
		}
		if msg != a.ringErr {
			a.log.Error("refused ring update", "from", src, "err", err)
		}
		a.ringErr, a.ringErrAt = msg, a.cfg.Now()
		return false
	}
	for _, c := range res.Conflicts {
		a.stats.conflicts.Add(1)
		a.log.Warn("conflicting ring entries (space taken over twice)", "conflict", c.String())
	}
	if !res.Changed {
		return false
	}
	if wasEmpty {
		a.log.Info("ring received", "from", src, "seeds", a.ring.Seeds)
		a.proposing = false
		a.adopting = false
		if a.rejoining {
			a.awaitRingsFromOwners(src)
		}
		a.rejoining = false
	}
	a.ringChanged()
	return true
}

// awaitRingsFromOwners starts waiting, after a rejoin, for the ring of every other owner
// (src, the one we adopted, excepted) and asks them for it at once.
func (a *Allocator) awaitRingsFromOwners(src string) {
	a.awaitRings = map[mesh.PeerName]bool{}
	for _, p := range a.ring.Owners() {
		if p != a.cfg.Name {
			a.awaitRings[p] = true
		}
	}
	if p, err := mesh.ParsePeerName(src); err == nil {
		delete(a.awaitRings, p)
	}
	a.synced = false
	a.startedAt = a.cfg.Now()
	a.helloIfUnsynced()
}

// mustWaitForRings reports whether allocation has to wait to hear peers' rings first: after
// a restart with a saved ring that names other owners (our space may have been reclaimed
// while we were away), or after rejoining with a lost database (awaitRings). It waits at
// most two ticks: nobody answering means we are alone, and our ring is the best there is.
func (a *Allocator) mustWaitForRings() bool {
	if a.synced {
		return false
	}
	if a.awaitRings != nil {
		for p := range a.awaitRings {
			if !a.reachable(p) {
				delete(a.awaitRings, p)
			}
		}
		if len(a.awaitRings) == 0 {
			a.synced, a.awaitRings = true, nil
			return false
		}
	}
	if a.cfg.Now().Sub(a.startedAt) < 2*a.cfg.tick {
		a.waitReason = "waiting to hear the ring from peers (our space may have changed while we were away)"
		return true
	}
	a.synced, a.awaitRings = true, nil
	return false
}

// startConsensus begins (once) the election of the first split.
func (a *Allocator) startConsensus() {
	if a.node == nil || a.proposing || !a.ring.Empty() || a.adopting {
		return
	}
	a.proposing = true
	a.log.Info("starting consensus on the initial split", "quorum", a.node.Quorum())
	a.propose()
}

func (a *Allocator) propose() {
	a.lastPropose = a.cfg.Now()
	a.countKnownPeers()
	a.node.Propose()
	a.think(true)
}

// countKnownPeers raises the quorum of plain "consensus" to a majority of the peers the
// mesh knows, when that is more than the initial peers: a peer relaunched without
// arguments, its database lost, must not agree with itself alone on a new ring. Raising a
// quorum only ever makes this proposer wait for more acceptances, never fewer.
func (a *Allocator) countKnownPeers() {
	if !a.cfg.plainConsensus {
		return
	}
	pc, ok := a.cfg.Peers.(PeerCounter)
	if !ok {
		return
	}
	if q := pc.NumPeers()/2 + 1; a.node.RaiseQuorum(q) {
		a.log.Info("consensus quorum raised to a majority of the peers known", "quorum", q)
	}
}

// think advances Paxos and seeds the ring once it decided.
func (a *Allocator) think(announce bool) {
	changed := a.node.Think() || announce
	// An acceptor's promises must survive a restart, or a restarted peer could vote for
	// two different values; unlock saves them before anything is sent.
	a.dirtyPaxos = a.dirtyPaxos || changed
	if v, ok := a.node.Consensus(); ok {
		if err := a.ring.Seed(v); err != nil {
			a.log.Error("seeding ring from consensus", "err", err)
			return
		}
		a.log.Info("consensus reached; ring seeded", "peers", v)
		a.proposing = false
		a.ringChanged()
		a.broadcastRing()
		return
	}
	if changed {
		a.outbox = append(a.outbox, outMsg{broadcast: true, data: &gossipData{paxos: a.node.State()}})
	}
}

func (a *Allocator) handlePaxos(s paxos.State) {
	if !a.ring.Empty() {
		// Tell the elector the election is over, at most once per tick.
		if a.cfg.Now().Sub(a.lastRingTx) >= a.cfg.tick {
			a.broadcastRing()
		}
		return
	}
	if a.node == nil {
		return
	}
	if a.node.Update(s) {
		a.lastLearned = a.cfg.Now()
	}
	if !a.proposing {
		a.startConsensus()
		return
	}
	a.think(false)
}

// Prime starts consensus now instead of at the first allocation.
func (a *Allocator) Prime() {
	a.mu.Lock()
	a.startConsensus()
	a.unlock()
}

func (a *Allocator) subnetRange(subnet netip.Prefix) (netip.Prefix, addr.Range, error) {
	if !subnet.IsValid() {
		return a.cfg.DefaultSubnet, a.cfg.subnet, nil
	}
	subnet = subnet.Masked()
	r, err := addr.FromPrefix(subnet)
	if err != nil || !a.cfg.rng.ContainsRange(r) {
		return subnet, r, fmt.Errorf("%w: subnet %s not inside %s", ErrOutOfRange, subnet, a.cfg.Range)
	}
	return subnet, r, nil
}

// wait blocks until something changed, ctx ends or the allocator closes.
func (a *Allocator) wait(ctx context.Context, ch chan struct{}) error {
	a.pending.Add(1)
	defer a.pending.Add(-1)
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("ipam: waiting for the ring or for space: %w", ctx.Err())
	case <-a.done:
		return ErrClosed
	}
}

// Allocate returns the address of (id, iface) in subnet (the default subnet if subnet is the
// zero Prefix), allocating the lowest free one of our space, or asking the peer with the most
// free space for some when we have none. It waits until the ring is ready or ctx ends; the
// same (id, iface, subnet) always gets the same address.
func (a *Allocator) Allocate(ctx context.Context, id, iface string, subnet netip.Prefix) (netip.Prefix, error) {
	k := Key{id, iface}
	if err := k.valid(); err != nil {
		return netip.Prefix{}, err
	}
	subnet, sr, err := a.subnetRange(subnet)
	if err != nil {
		return netip.Prefix{}, err
	}
	for {
		p, ch, done, err := a.tryAllocate(k, subnet, sr)
		if done {
			return p, err
		}
		if err := a.wait(ctx, ch); err != nil {
			return netip.Prefix{}, err
		}
	}
}

// tryAllocate is one attempt; done is false when the caller has to wait on ch, the change
// channel as it was when the attempt ended, so a change after the attempt is never missed.
func (a *Allocator) tryAllocate(k Key, subnet netip.Prefix, sr addr.Range) (p netip.Prefix, ch chan struct{}, done bool, err error) {
	a.mu.Lock()
	defer a.unlock()
	p, done, err = a.allocateLocked(k, subnet, sr)
	return p, a.changed, done, err
}

func (a *Allocator) allocateLocked(k Key, subnet netip.Prefix, sr addr.Range) (netip.Prefix, bool, error) {
	switch {
	case a.closed:
		return netip.Prefix{}, true, ErrClosed
	case a.cfg.mode == initObserver:
		return netip.Prefix{}, true, ErrObserver
	}
	for _, p := range a.allocs[k] {
		if p.Bits() == subnet.Bits() && subnet.Contains(p.Addr()) {
			// Made by an earlier call or a re-claim: make sure it is saved before use.
			if err := a.commit(); err != nil {
				return netip.Prefix{}, true, fmt.Errorf("ipam: allocate %s: %w", k, err)
			}
			return p, true, nil
		}
	}
	a.startConsensus() // no-op unless the ring is empty; may seed it at once (quorum 1)
	if a.ring.Empty() {
		return netip.Prefix{}, false, nil
	}
	if a.mustWaitForRings() {
		return netip.Prefix{}, false, nil
	}
	ad, ok := a.space.Allocate(addr.Usable(sr))
	if !ok {
		a.requestSpace(sr)
		return netip.Prefix{}, false, nil
	}
	p := netip.PrefixFrom(ad.Netip(), subnet.Bits())
	a.record(k, p)
	a.reportFreeAt(ad)
	if err := a.commit(); err != nil {
		a.space.Release(ad)
		a.unrecord(k, p.Addr())
		return netip.Prefix{}, true, fmt.Errorf("ipam: allocate %s: %w", k, err)
	}
	a.waitReason = ""
	return p, true, nil
}

// requestSpace asks the reachable peer with the most free space in sr for some.
func (a *Allocator) requestSpace(sr addr.Range) {
	now := a.cfg.Now()
	if req, ok := a.spaceReqs[sr]; ok && now.Sub(req.at) < 2*a.cfg.tick {
		return
	}
	delete(a.spaceReqs, sr)
	var unreachable int
	for _, d := range a.ring.Donors(sr, a.cfg.Name) {
		if a.denied[sr][d.Peer] {
			continue
		}
		if !a.reachable(d.Peer) {
			unreachable++
			continue
		}
		a.spaceReqs[sr] = request{d.Peer, now}
		a.log.Debug("asking for space", "subnet", sr, "peer", d.Peer, "their_free", d.Free)
		a.unicast(d.Peer, encodeSpace(msgSpaceRequest, sr, nil))
		a.waitReason = "waiting for IP(s) to become available"
		return
	}
	a.log.Debug("no peer to ask for space", "subnet", sr, "unreachable", unreachable)
	if unreachable > 0 {
		a.waitReason = "all IP ranges owned by unreachable peers - use 'weavectl rmpeer' if they are dead"
	} else {
		a.waitReason = "waiting for IP(s) to become available (no peer has free space)"
	}
}

func (a *Allocator) handleSpaceRequest(src mesh.PeerName, sr addr.Range) {
	if a.ring.Empty() || src == a.cfg.Name || !a.cfg.rng.ContainsRange(sr) {
		a.unicast(src, encodeSpace(msgSpaceDenied, sr, a.ring))
		return
	}
	block, ok := a.space.Donate(sr)
	if !ok {
		a.log.Debug("no space to give", "subnet", sr, "to", src)
		a.unicast(src, encodeSpace(msgSpaceDenied, sr, a.ring))
		return
	}
	if err := a.ring.Grant(a.cfg.Name, block, src); err != nil {
		// Space and ring disagree: a bug; resynchronise the space from the ring.
		a.log.Error("donation failed", "range", block, "to", src, "err", err)
		a.ringChanged()
		a.unicast(src, encodeSpace(msgSpaceDenied, sr, a.ring))
		return
	}
	a.log.Debug("donated space", "range", block, "to", src)
	a.ringChanged()
	a.broadcastRing()
	a.unicast(src, encodeRing(a.ring))
}

func (a *Allocator) handleClaim(src mesh.PeerName, ad addr.Addr) {
	switch {
	case a.ring.Empty() || a.ring.Owner(ad) != a.cfg.Name:
		a.unicast(src, encodeClaimDenied(ad, claimNotOwner, a.ring))
	case !a.space.IsFree(ad) || !a.space.Give(addr.Range{Start: ad, End: ad + 1}):
		a.unicast(src, encodeClaimDenied(ad, claimInUse, a.ring))
	default:
		if err := a.ring.Grant(a.cfg.Name, addr.Range{Start: ad, End: ad + 1}, src); err != nil {
			a.log.Error("claim grant failed", "addr", ad, "to", src, "err", err)
			a.ringChanged()
			a.unicast(src, encodeClaimDenied(ad, claimNotOwner, a.ring))
			return
		}
		a.log.Info("gave an address back to the peer using it", "addr", ad, "to", src)
		a.ringChanged()
		a.broadcastRing()
		a.unicast(src, encodeRing(a.ring))
	}
}

func (a *Allocator) handleClaimDenied(src mesh.PeerName, ad addr.Addr, reason byte) {
	delete(a.claimReqs, ad)
	if reason != claimInUse {
		a.notify() // the ring that came with it names the new owner; ask again
		return
	}
	if w, ok := a.wanted[ad]; ok {
		delete(a.wanted, ad)
		a.claimDenied[ad] = src
		a.log.Info("claim refused: address in use elsewhere", "addr", ad, "owner", src, "container", w.key)
	}
	if k, ok := a.byAddr[ad.Netip()]; ok && !a.space.Owns(ad) {
		if _, seen := a.conflicts[ad]; !seen {
			a.stats.conflicts.Add(1)
			msg := fmt.Sprintf("%s of %s is used here but owned and in use by %s: release it on one side", ad, k, src)
			a.conflicts[ad] = msg
			a.log.Error("address conflict", "addr", ad, "container", k, "owner", src)
		}
	}
	a.notify()
}

// Claim records that (id, iface) uses addr, e.g. a restarted container keeping its address.
// Inside the range the address must be free: ours, or given to us by its owner (we ask);
// outside it is only recorded. It waits until the ring is ready or ctx ends.
func (a *Allocator) Claim(ctx context.Context, id, iface string, p netip.Prefix) error {
	k := Key{id, iface}
	if err := k.valid(); err != nil {
		return err
	}
	ad, ok := addr.FromNetip(p.Addr())
	if !ok || !p.IsValid() {
		return fmt.Errorf("%w: %s is not an IPv4 address", ErrBadArgument, p)
	}
	p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits())
	for {
		ch, done, err := a.tryClaim(k, p, ad)
		if done {
			return err
		}
		if err := a.wait(ctx, ch); err != nil {
			a.mu.Lock()
			if w, ok := a.wanted[ad]; ok && w.key == k {
				delete(a.wanted, ad)
			}
			a.mu.Unlock()
			return err
		}
	}
}

func (a *Allocator) tryClaim(k Key, p netip.Prefix, ad addr.Addr) (chan struct{}, bool, error) {
	a.mu.Lock()
	defer a.unlock()
	done, err := a.claimLocked(k, p, ad)
	return a.changed, done, err
}

func (a *Allocator) claimLocked(k Key, p netip.Prefix, ad addr.Addr) (bool, error) {
	if a.closed {
		return true, ErrClosed
	}
	if other, ok := a.byAddr[p.Addr()]; ok {
		if other == k {
			// Possibly granted by its owner just now: saved before we say yes.
			if err := a.commit(); err != nil {
				return true, fmt.Errorf("ipam: claim %s for %s: %w", p, k, err)
			}
			return true, nil
		}
		return true, fmt.Errorf("%w: %s is used by %s", ErrAddressInUse, p.Addr(), other)
	}
	if !a.cfg.rng.Contains(ad) {
		a.record(k, p)
		return true, a.commitOrUndo(k, p, false)
	}
	if a.cfg.mode == initObserver {
		return true, ErrObserver
	}
	a.startConsensus()
	if a.ring.Empty() {
		return false, nil
	}
	if a.awaitRings != nil && a.mustWaitForRings() {
		return false, nil
	}
	if a.space.IsFree(ad) {
		a.space.Take(ad)
		a.record(k, p)
		a.reportFreeAt(ad)
		return true, a.commitOrUndo(k, p, true)
	}
	owner := a.ring.Owner(ad)
	if owner == a.cfg.Name {
		return true, fmt.Errorf("%w: %s is ours but not free", ErrAddressInUse, p.Addr())
	}
	if by, ok := a.claimDenied[ad]; ok {
		delete(a.claimDenied, ad)
		return true, fmt.Errorf("%w: %s is owned and in use by peer %s", ErrAddressInUse, p.Addr(), by)
	}
	a.wanted[ad] = wantedClaim{k, p}
	if at, ok := a.claimReqs[ad]; (!ok || a.cfg.Now().Sub(at) >= 2*a.cfg.tick) && a.reachable(owner) {
		a.claimReqs[ad] = a.cfg.Now()
		a.unicast(owner, encodeClaim(ad))
	}
	return false, nil
}

func (a *Allocator) commitOrUndo(k Key, p netip.Prefix, inRange bool) error {
	if err := a.commit(); err != nil {
		if inRange {
			ad, _ := addr.FromNetip(p.Addr())
			a.space.Release(ad)
		}
		a.unrecord(k, p.Addr())
		return fmt.Errorf("ipam: claim %s for %s: %w", p, k, err)
	}
	return nil
}

// Lookup returns the addresses of (id, iface).
func (a *Allocator) Lookup(id, iface string) []netip.Prefix {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.allocs[Key{id, iface}])
}

// Owned returns every allocation of this peer.
func (a *Allocator) Owned() map[Key][]netip.Prefix {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[Key][]netip.Prefix, len(a.allocs))
	for k, v := range a.allocs {
		out[k] = slices.Clone(v)
	}
	return out
}

func (a *Allocator) releaseLocked(k Key, only netip.Addr) int {
	n := 0
	for _, p := range slices.Clone(a.allocs[k]) {
		if only.IsValid() && p.Addr() != only {
			continue
		}
		a.unrecord(k, p.Addr())
		if ad, ok := addr.FromNetip(p.Addr()); ok && a.cfg.rng.Contains(ad) {
			a.space.Release(ad)
			a.reportFreeAt(ad)
			delete(a.conflicts, ad)
			delete(a.claimReqs, ad)
		}
		n++
	}
	return n
}

// Release frees every address of (id, iface); it returns how many there were.
func (a *Allocator) Release(id, iface string) (int, error) {
	k := Key{id, iface}
	return a.release(func(yield func(Key) bool) { yield(k) }, netip.Addr{})
}

// ReleaseAddr frees one address of (id, iface).
func (a *Allocator) ReleaseAddr(id, iface string, ip netip.Addr) (int, error) {
	k := Key{id, iface}
	return a.release(func(yield func(Key) bool) { yield(k) }, ip.Unmap())
}

// ReleaseAll frees every address of container id, whatever the interface.
func (a *Allocator) ReleaseAll(id string) (int, error) {
	return a.release(func(yield func(Key) bool) {
		for k := range a.allocs {
			if k.ID == id && !yield(k) {
				return
			}
		}
	}, netip.Addr{})
}

// release frees the allocations of the keys keys yields (called with the lock held).
func (a *Allocator) release(keys func(yield func(Key) bool), only netip.Addr) (int, error) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return 0, ErrClosed
	}
	var ks []Key
	for k := range keys {
		ks = append(ks, k)
	}
	n := 0
	for _, k := range ks {
		n += a.releaseLocked(k, only)
	}
	if n > 0 {
		a.notify()
	}
	err := a.commit()
	a.unlock()
	if err != nil {
		return n, fmt.Errorf("ipam: release: %w", err)
	}
	return n, nil
}

// ResolvePeer maps a peer name or a nickname of a ring owner to a peer name.
func (a *Allocator) ResolvePeer(s string) (mesh.PeerName, error) {
	if p, err := mesh.ParsePeerName(s); err == nil {
		return p, nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	var found []mesh.PeerName
	for _, p := range a.ring.Owners() {
		if a.cfg.Peers.NickName(p) == s {
			found = append(found, p)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return 0, fmt.Errorf("%w: %q", ErrUnknownPeer, s)
	}
	return 0, fmt.Errorf("%w: nickname %q names %d peers; use the peer name", ErrBadArgument, s, len(found))
}

// reclaimBump is added to the versions of entries taken from a dead peer, so the takeover
// wins over edits the dead peer may have made that we never saw. Every peer uses the same
// bump, so two takeovers of the same space tie, and the tie is settled (and reported)
// identically everywhere.
const reclaimBump = 100

// RemovePeer takes over the space of a dead peer (weavectl rmpeer) and returns the number
// of addresses taken. Run it on one peer only: two peers doing it at once is a conflict
// (detected and reported, but containers may then share an address until one releases).
func (a *Allocator) RemovePeer(p mesh.PeerName) (uint32, error) {
	a.mu.Lock()
	defer a.unlock()
	switch {
	case a.closed:
		return 0, ErrClosed
	case a.cfg.mode == initObserver:
		return 0, ErrObserver
	case p == a.cfg.Name:
		return 0, fmt.Errorf("%w: cannot remove ourselves", ErrBadArgument)
	case a.ring.Empty():
		return 0, ErrNotInitialised
	case !slices.Contains(a.ring.Owners(), p):
		return 0, nil // nothing to take; rmpeer of a peer without space is fine
	case a.cfg.Peers.IsReachable(p):
		return 0, fmt.Errorf("%w: %s", ErrPeerReachable, p)
	}
	n := a.takeOver(p)
	a.log.Info("took over the space of a removed peer", "peer", p, "addresses", n)
	a.ringChanged()
	a.broadcastRing()
	return n, nil
}

// Handover gives all our space to a reachable peer and forgets our allocations (weavectl
// reset). It returns the heir (UnknownPeerName if we owned nothing).
func (a *Allocator) Handover() (mesh.PeerName, error) {
	a.mu.Lock()
	defer a.unlock()
	if a.closed {
		return 0, ErrClosed
	}
	if len(a.ring.OwnedBy(a.cfg.Name)) == 0 {
		return 0, nil
	}
	var heir mesh.PeerName
	for _, p := range a.ring.Owners() {
		if p != a.cfg.Name && a.cfg.Peers.IsReachable(p) {
			heir = p
			break
		}
	}
	if heir == mesh.UnknownPeerName {
		return 0, ErrNoHeir
	}
	for k := range a.allocs {
		a.releaseLocked(k, netip.Addr{})
	}
	n := a.ring.Transfer(a.cfg.Name, heir, 1)
	a.log.Info("handed our space over", "heir", heir, "addresses", n)
	a.ringChanged()
	a.broadcastRing()
	return heir, nil
}

// ForgetRing is the repair for "seeded by different peers" on the side that gives up:
// it drops our ring but keeps our allocations, so the next ring heard from a peer is
// adopted and the addresses our containers use are re-claimed from their new owners (a
// refused one is reported as a conflict). Run it on every peer of that side.
func (a *Allocator) ForgetRing() error {
	a.mu.Lock()
	defer a.unlock()
	if a.closed {
		return ErrClosed
	}
	a.log.Warn("forgetting our ring: adopting the next one a peer sends", "allocations", len(a.allocs))
	a.ring = ring.New(a.cfg.rng)
	a.space.SetOwned(nil)
	a.ringErr = ""
	a.adopting = true
	a.proposing = false
	if a.node != nil {
		a.node = paxos.NewNode(paxos.NodeID{Name: a.cfg.Name, UID: a.cfg.UID}, a.node.Quorum())
		a.dirtyPaxos = true
	}
	a.dirtyRing = true
	a.notify()
	return nil
}

// Tick runs the periodic work: re-proposing, retrying requests, reclaiming dead peers'
// space. The ticker goroutine calls it; tests may call it directly.
func (a *Allocator) Tick() {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	now := a.cfg.Now()
	if a.proposing && a.ring.Empty() {
		// Re-propose only when the election has stalled (nothing new learned, nothing
		// proposed, for a jittered tick), so competing proposers do not keep out-bidding
		// each other while messages are still in flight.
		quiet := now.Sub(a.lastPropose)
		if l := now.Sub(a.lastLearned); l < quiet {
			quiet = l
		}
		if quiet >= a.cfg.tick+time.Duration(a.rnd.Int64N(int64(a.cfg.tick))) {
			a.propose()
		}
	}
	for sr, req := range a.spaceReqs {
		if now.Sub(req.at) >= 2*a.cfg.tick {
			delete(a.spaceReqs, sr)
		}
	}
	clear(a.denied)
	a.helloIfUnsynced()
	a.reclaim(now)
	a.checkOrphans()
	a.notify()
	a.unlock()
}

// reclaim takes over the space of peers the cluster agreed are dead for ReclaimAfter. Only
// the reachable space owner with the lowest name does it, to keep two peers from doing it at
// once; after a partition both sides may have, and the merge reports it.
func (a *Allocator) reclaim(now time.Time) {
	if a.cfg.ReclaimAfter <= 0 || a.ring.Empty() || a.cfg.mode == initObserver {
		return
	}
	owners := a.ring.Owners()
	leader := a.cfg.Name
	for _, p := range owners {
		if p < leader && a.cfg.Peers.IsReachable(p) {
			leader = p
		}
	}
	if leader != a.cfg.Name {
		return
	}
	changed := false
	for _, p := range owners {
		if p == a.cfg.Name || a.cfg.Peers.IsReachable(p) {
			continue
		}
		since, dead := a.cfg.Peers.DeadSince(p)
		if !dead || now.Sub(since) < a.cfg.ReclaimAfter {
			continue
		}
		n := a.takeOver(p)
		a.log.Warn("reclaimed the space of a dead peer", "peer", p, "dead_since", since, "addresses", n)
		changed = true
	}
	if changed {
		a.ringChanged()
		a.broadcastRing()
	}
}

// takeOver moves p's space to us and quarantines it (see space.Quarantine). The caller
// runs ringChanged.
func (a *Allocator) takeOver(p mesh.PeerName) uint32 {
	theirs := a.ring.OwnedBy(p)
	n := a.ring.Transfer(p, a.cfg.Name, reclaimBump)
	a.space.SetOwned(a.ring.OwnedBy(a.cfg.Name))
	for _, r := range theirs {
		a.space.Quarantine(r)
	}
	a.stats.reclaimed.Add(uint64(n))
	return n
}

func (a *Allocator) ticker() {
	defer a.wg.Done()
	t := time.NewTicker(a.cfg.tick)
	defer t.Stop()
	for {
		select {
		case <-a.done:
			return
		case <-t.C:
			a.Tick()
		}
	}
}

// Close stops the ticker, saves what is pending and closes the store. It is idempotent.
func (a *Allocator) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	close(a.done)
	err := a.commit()
	a.mu.Unlock()
	a.wg.Wait()
	if a.ownStore {
		err = errors.Join(err, a.store.Close())
	}
	return err
}
