package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weavemesh/weave/internal/logx"
)

// Router is the local peer: it listens for and dials connections, keeps the topology and
// routes, and carries gossip channels and memberlist over the mesh.
//
// Concurrency: one mutex (mu) guards the topology, connections, targets and channels.
// Goroutines, all owned by the Router and ended by Close: the accept loop, the run loop
// (timers: topology flush, route recalculation, periodic gossip, connection maker), one
// handshake goroutine per connection attempt, and a reader and a writer per connection.
// Gossiper and hook callbacks are always called without mu held.
type Router struct {
	cfg Config
	log *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	wake   chan struct{}

	closeOnce sync.Once
	done      chan struct{}
	ready     atomic.Bool
	started   atomic.Bool
	counters  connCounters
	rng       *lockedRand
	admit     *admission
	// refuseLog rate-limits the logs of refused inbound connections, per reason.
	refuseLog *logx.Limiter

	// listener is set by Start.
	listener net.Listener

	mu sync.Mutex
	// guarded by mu:
	closed     bool
	topo       *topo
	conns      map[PeerName]*meshConn
	handshakes map[*handshakeState]struct{}
	targets    map[string]*target
	channels   map[string]*gossipChannel
	seen       seenSet
	surrogate  map[uint64]time.Time
	flushAt    time.Time // zero: nothing pending
	routeAt    time.Time
	lastRoutes map[PeerName]PeerName
	snap       *RouteSnapshot
	onGC       []func(PeerName)
	onRoutes   []func()
	stats      RouterStats

	ml *memberlistState
}

// RouterStats are counters for metrics.
type RouterStats struct {
	MalformedMessages  uint64 `json:"malformed_messages"`
	DroppedSends       uint64 `json:"dropped_sends"`
	ConnectionsRefused uint64 `json:"connections_refused"`
	Terminations       uint64 `json:"connection_terminations"`
	UnknownChannel     uint64 `json:"unknown_channel_messages"`
	NoRoute            uint64 `json:"no_route"`
	// SelfClaims: topology entries with our name and another UID (ignored; see topo.selfClaim).
	SelfClaims uint64 `json:"self_claims"`
}

type lockedRand struct {
	mu sync.Mutex
	r  *rand.Rand
}

func (l *lockedRand) Float64() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Float64()
}

// Errors callers may branch on.
var (
	ErrClosed           = errors.New("mesh router closed")
	ErrConnectToSelf    = errors.New("connection to ourselves")
	ErrDuplicateConn    = errors.New("duplicate connection")
	ErrConnLimit        = errors.New("connection limit reached")
	ErrNoRoute          = errors.New("no route to peer")
	ErrUnknownConn      = errors.New("no such connection")
	errHeartbeatTimeout = errors.New("heartbeat timeout")
)

// New validates cfg and returns a Router that does nothing until Start.
func New(cfg Config) (*Router, error) {
	if cfg.Name == UnknownPeerName || uint64(cfg.Name)>>peerNameBits != 0 {
		return nil, fmt.Errorf("mesh config: invalid peer name %#x", uint64(cfg.Name))
	}
	cfg.setDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	seed := newUID()
	r := &Router{
		cfg:        cfg,
		log:        cfg.Logger.With("component", "mesh", "local", cfg.Name.String()),
		ctx:        ctx,
		cancel:     cancel,
		wake:       make(chan struct{}, 1),
		done:       make(chan struct{}),
		rng:        &lockedRand{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))},
		admit:      newAdmission(),
		conns:      map[PeerName]*meshConn{},
		handshakes: map[*handshakeState]struct{}{},
		targets:    map[string]*target{},
		channels:   map[string]*gossipChannel{},
		seen:       newSeenSet(8192),
		surrogate:  map[uint64]time.Time{},
	}
	r.refuseLog = logx.NewLimiter(r.log, refuseLogInterval, refuseLogBurst)
	r.topo = newTopo(topoConfig{
		Self:        cfg.Name,
		UID:         cfg.UID,
		NickName:    cfg.NickName,
		Now:         time.Now,
		RouteDelay:  cfg.RouteDelay,
		RepairDelay: cfg.TopologyInterval / 2,
		Rand:        rand.New(rand.NewPCG(seed+1, seed)),
		Log:         r.log,
		Send:        r.sendLocked,
	})
	persisted, err := loadTargets(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	for _, t := range append(slices.Clone(cfg.Peers), persisted...) {
		if err := r.addTargetLocked(t); err != nil {
			return nil, fmt.Errorf("mesh config: target %q: %w", t, err)
		}
	}
	// Targets given at launch are kept too, so that a stop and a launch without arguments
	// resume the same mesh (forget removes them).
	if len(cfg.Peers) > 0 {
		if err := r.persistTargetsLocked(r.directTargetsLocked()); err != nil {
			return nil, err
		}
	}
	if !cfg.NoMemberlist {
		if err := r.setupMemberlist(); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// Name returns our peer name.
func (r *Router) Name() PeerName { return r.cfg.Name }

// UID returns this incarnation's id.
func (r *Router) UID() uint64 { return r.cfg.UID }

// Start listens (unless ListenAddr is "-") and starts the background work. It does not block.
func (r *Router) Start() error {
	if r.ctx.Err() != nil {
		return ErrClosed
	}
	if !r.started.CompareAndSwap(false, true) {
		return errors.New("mesh router already started")
	}
	if addr := r.listenAddr(); addr != "-" {
		ln, err := r.cfg.Transport.Listen(addr)
		if err != nil {
			return fmt.Errorf("mesh listen on %s: %w", addr, err)
		}
		r.listener = ln
		r.wg.Add(1)
		go r.acceptLoop(ln)
	}
	r.wg.Add(1)
	go r.runLoop()
	if r.ml != nil {
		if err := r.startMemberlist(); err != nil {
			r.Close()
			return err
		}
	}
	r.ready.Store(true)
	r.log.Info("mesh router started", "nickname", r.cfg.NickName, "uid", r.cfg.UID, "listen", r.listenAddr())
	r.kick()
	return nil
}

func (r *Router) listenAddr() string {
	if r.cfg.ListenAddr != "" {
		return r.cfg.ListenAddr
	}
	return net.JoinHostPort("", strconv.Itoa(r.cfg.Port))
}

// ListenAddr returns the address we listen on (nil before Start or without a listener).
func (r *Router) ListenAddr() net.Addr {
	if r.listener == nil {
		return nil
	}
	return r.listener.Addr()
}

// Ready reports whether the router is started and not closed.
func (r *Router) Ready() bool { return r.ready.Load() }

// Done is closed when the router has stopped (Close). Nothing a remote peer says stops it.
func (r *Router) Done() <-chan struct{} { return r.done }

// Close stops everything and waits for all goroutines. It is idempotent.
func (r *Router) Close() error {
	r.closeOnce.Do(func() {
		r.ready.Store(false)
		r.stopMemberlist()
		r.cancel()
		if r.listener != nil {
			r.listener.Close()
		}
		r.mu.Lock()
		r.closed = true
		conns := slices.Collect(maps.Values(r.conns))
		for h := range r.handshakes {
			h.nc.Close()
		}
		r.mu.Unlock()
		for _, c := range conns {
			c.close(ErrClosed)
		}
		r.wg.Wait()
		close(r.done)
	})
	return nil
}

func (r *Router) kick() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// afterChangeLocked schedules flush and route recalculation after topology changes.
func (r *Router) afterChangeLocked() {
	now := time.Now()
	if r.topo.dirty() && r.flushAt.IsZero() {
		r.flushAt = now.Add(r.cfg.TopologyDelay)
		r.kick()
	}
	if r.topo.rtDirty && r.routeAt.IsZero() {
		r.routeAt = now.Add(r.cfg.RouteDelay)
		r.kick()
	}
}

// runLoop owns the timers: topology flush, route recalculation, periodic gossip and the
// connection maker.
func (r *Router) runLoop() {
	defer r.wg.Done()
	topoTick := time.NewTicker(jittered(r.cfg.TopologyInterval, r.rng))
	defer topoTick.Stop()
	gossipTick := time.NewTicker(jittered(r.cfg.GossipInterval, r.rng))
	defer gossipTick.Stop()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		next := r.step()
		timer.Reset(max(time.Until(next), time.Millisecond))
		select {
		case <-r.ctx.Done():
			return
		case <-r.wake:
		case <-timer.C:
		case <-topoTick.C:
			r.mu.Lock()
			r.topo.gossipTick()
			r.afterChangeLocked()
			r.mu.Unlock()
		case <-gossipTick.C:
			r.gossipAllChannels()
		}
	}
}

// step does whatever timed work is due and returns when it next needs to run.
func (r *Router) step() time.Time {
	now := time.Now()
	var gone []PeerName
	var routeFns []func()
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return now.Add(time.Hour)
	}
	if !r.flushAt.IsZero() && !now.Before(r.flushAt) {
		r.flushAt = time.Time{}
		r.topo.flush()
		gone = r.topo.gc()
		r.topo.rtDirty = true
		if r.routeAt.IsZero() {
			r.routeAt = now
		}
	}
	if !r.routeAt.IsZero() && !now.Before(r.routeAt) {
		r.routeAt = time.Time{}
		r.topo.recompute()
		if !maps.Equal(r.lastRoutes, r.topo.rt.unicast) {
			r.lastRoutes = r.topo.rt.unicast
			routeFns = slices.Clone(r.onRoutes)
		}
	}
	r.afterChangeLocked()
	gcFns := slices.Clone(r.onGC)
	next := r.connMakerLocked(now)
	for _, t := range []time.Time{r.flushAt, r.routeAt} {
		if !t.IsZero() && t.Before(next) {
			next = t
		}
	}
	r.mu.Unlock()
	for _, n := range gone {
		r.log.Info("removed unreachable peer", "peer", n.String())
		for _, f := range gcFns {
			f(n)
		}
	}
	for _, f := range routeFns {
		f()
	}
	return next
}

// jittered returns d ± 10%, so peers started together do not gossip in lockstep.
func jittered(d time.Duration, rng *lockedRand) time.Duration {
	return time.Duration(float64(d) * (0.9 + 0.2*rng.Float64()))
}

// OnPeerGC registers f to be called with each peer removed from the topology because it is
// no longer reachable. f must not block.
func (r *Router) OnPeerGC(f func(PeerName)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.onGC = append(r.onGC, f)
}

// OnRoutesChanged registers f to be called after the unicast routes changed (the data plane
// invalidates what it derived from them). f must not block.
func (r *Router) OnRoutesChanged(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.onRoutes = append(r.onRoutes, f)
}

// Routes returns the current routes as a snapshot for the data plane; it is replaced, not
// changed, when routes change (OnRoutesChanged says when to take a new one).
func (r *Router) Routes() *RouteSnapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	rt := r.topo.routes()
	if r.snap == nil || r.snap.src != rt {
		r.snap = &RouteSnapshot{src: rt, rt: rt.clone()}
	}
	return r.snap
}

// UnicastNextHop returns the neighbour to send data for dst to, over established symmetric
// connections.
func (r *Router) UnicastNextHop(dst PeerName) (PeerName, bool) {
	return r.Routes().UnicastNextHop(dst)
}

// BroadcastNextHops returns the neighbours to forward origin's broadcast data to (its
// spanning tree over established symmetric connections).
func (r *Router) BroadcastNextHops(origin PeerName) []PeerName {
	return slices.Clone(r.Routes().BroadcastNextHops(origin))
}

// Peers returns the names of all peers in the topology, ourselves included, sorted.
func (r *Router) Peers() []PeerName {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]PeerName, 0, len(r.topo.peers))
	for n, e := range r.topo.peers {
		if e.Version != 0 {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// sendLocked queues msg to a directly connected neighbour (mu held). Never blocks.
func (r *Router) sendLocked(to PeerName, msg []byte) {
	c := r.conns[to]
	if c == nil {
		r.stats.NoRoute++
		return
	}
	if !c.enqueue(msg) {
		r.stats.DroppedSends++
	}
}
