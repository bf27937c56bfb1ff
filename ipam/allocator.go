package ipam

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weavemesh/weave/internal/logx"
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
		log:         cfg.Logger.With(logx.KeyComponent, "ipam"),
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
		a.log.Error("saving ipam state failed; will retry", logx.KeyErr, err)
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
			a.log.Debug("unicast failed", logx.KeyPeer, m.dst, logx.KeyErr, err)
		}
	}
}

func (a *Allocator) notify() {
	close(a.changed)
	a.changed = make(chan struct{})
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
	maps.DeleteFunc(a.spaceReqs, func(_ addr.Range, req request) bool { return now.Sub(req.at) >= 2*a.cfg.tick })
	clear(a.denied)
	a.helloIfUnsynced()
	a.reclaim(now)
	a.checkOrphans()
	a.notify()
	a.unlock()
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
