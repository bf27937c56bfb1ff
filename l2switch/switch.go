package l2switch

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weavemesh/weave/internal/logx"
	"github.com/weavemesh/weave/mesh"
	"github.com/weavemesh/weave/overlay"
	"github.com/weavemesh/weave/tap"
	"github.com/weavemesh/weave/tap/frame"
)

// Routes is what the router needs from the mesh; *mesh.Router implements it.
type Routes interface {
	UnicastNextHop(dst mesh.PeerName) (mesh.PeerName, bool)
	BroadcastNextHops(origin mesh.PeerName) []mesh.PeerName
	Peers() []mesh.PeerName
}

// snapshotter is implemented by *mesh.Router: its route snapshot is replaced whenever the
// routes are recomputed, including changes of broadcast trees that leave the unicast routes
// (and so OnRoutesChanged) alone.
type snapshotter interface {
	Routes() *mesh.RouteSnapshot
}

// routePoll is how often the switch checks whether the mesh recomputed its routes.
const routePoll = 100 * time.Millisecond

// Config configures a Switch.
type Config struct {
	// Name is our peer name. Required.
	Name mesh.PeerName
	// TAP is the bridge-side device. Required.
	TAP tap.Device
	// Forwarder carries frames to neighbours; nil: overlay.Null until SetForwarder.
	Forwarder overlay.Forwarder
	// MACMaxAge: default DefaultMACMaxAge.
	MACMaxAge time.Duration
	// Learner, if set, hears which remote peer each MAC lives behind, so that a kernel path
	// (fastdp) can send unicast to the right peer; *fastdp.FastDP implements it.
	Learner Learner
	// NoGSO turns GSO passthrough off: super-frames from the TAP are cut into segments
	// before they reach an overlay even when the TAP and the overlay could carry them
	// whole (for comparison in benchmarks; also the fallback everywhere else).
	NoGSO bool
	// Logger: nil discards.
	Logger *slog.Logger
}

// Learner follows the switch's MAC learning for remote MACs. Its methods are called from
// the forwarding goroutines and housekeeping, without the switch's locks held; a MAC is
// learned again only when it is new or moved, so calls are rare.
type Learner interface {
	// Learn: mac lives behind the remote peer.
	Learn(mac net.HardwareAddr, peer mesh.PeerName)
	// Forget: mac expired, moved to our own bridge, or its peer is gone.
	Forget(mac net.HardwareAddr)
}

// Stats counts what the switch did. Counters only grow.
type Stats struct {
	TAPFramesIn, TAPFramesOut uint64 // frames read from / written to the bridge
	Relayed                   uint64 // frames passed on towards another peer
	NoRoute                   uint64 // frames dropped: no route to their peer
	Oversize                  uint64 // frames dropped: too big for the path and not fragmentable
	ICMPSent                  uint64 // ICMP "fragmentation needed" synthesized
	Fragmented                uint64 // IPv4 packets fragmented to fit the path
	Malformed                 uint64 // frames too short for an Ethernet header
	MACMoves                  uint64 // MACs that moved between peers
	TAPWriteErrors            uint64
	// KernelCarried counts frames from our bridge that the switch did not send because
	// the kernel path (overlay.KernelCarrier) carried them already; KernelRelayOnly counts
	// broadcasts sent over userspace to such a neighbour only for it to pass them on.
	KernelCarried, KernelRelayOnly uint64
	// GSOWhole counts super-frames handed to an overlay or the TAP whole; GSOCut counts
	// super-frames the switch had to cut into segments (a hop or TAP that takes no
	// super-frames, a flood, a segment too big for the path).
	GSOWhole, GSOCut uint64
}

// Switch is the L2 forwarding core between one TAP and the overlays.
//
// Goroutines: routineReadTAP (one per TAP queue) and routineHousekeeping (route table
// rebuilds, MAC expiry); Receive runs on the overlay's readers. All stop on Close.
type Switch struct {
	name   mesh.PeerName
	tap    tap.Device
	routes Routes
	log    *slog.Logger
	macs   *macCache
	learnr Learner // nil: nobody follows learning
	gsoIn  bool    // read super-frames whole from the TAP (tap.GSOReader)
	noGSO  bool    // never hand super-frames to an overlay
	gsoOut tap.GSOWriter

	fwd    atomic.Pointer[fwdBox]
	table  atomic.Pointer[routeTable] // immutable snapshot, replaced on route changes
	snap   *mesh.RouteSnapshot        // what table was built from; housekeeping goroutine only
	dirty  chan struct{}              // routes changed: rebuild the table
	free   chan *worker               // idle workers for Receive (a sync.Pool would drop their big buffers at each GC)
	stats  counters
	closed chan struct{}
	once   sync.Once
	wg     sync.WaitGroup
}

type fwdBox struct{ f overlay.Forwarder }

type counters struct {
	tapIn, tapOut, relayed, noRoute, oversize, icmp, frag, malformed, moves, tapErr atomic.Uint64
	kernel, relayOnly, gsoWhole, gsoCut                                             atomic.Uint64
}

// routeTable is a snapshot of the mesh's routes, so that the per-frame path takes no lock.
type routeTable struct {
	unicast map[mesh.PeerName]mesh.PeerName
	bcast   map[mesh.PeerName][]mesh.PeerName
}

// New checks cfg and returns a Switch; Start runs it.
func New(cfg Config) (*Switch, error) {
	if cfg.Name == mesh.UnknownPeerName || cfg.TAP == nil {
		return nil, errors.New("l2switch: Name and TAP are required")
	}
	if cfg.MACMaxAge <= 0 {
		cfg.MACMaxAge = DefaultMACMaxAge
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	r := &Switch{
		name:   cfg.Name,
		tap:    cfg.TAP,
		log:    cfg.Logger,
		macs:   newMACCache(cfg.MACMaxAge),
		learnr: cfg.Learner,
		dirty:  make(chan struct{}, 1),
		closed: make(chan struct{}),
	}
	f := cfg.Forwarder
	if f == nil {
		f = &overlay.Null{}
	}
	r.fwd.Store(&fwdBox{f})
	r.table.Store(&routeTable{})
	r.noGSO = cfg.NoGSO
	if !cfg.NoGSO {
		_, reads := cfg.TAP.(tap.GSOReader)
		o, ok := cfg.TAP.(tap.Offloader)
		r.gsoIn = reads && ok && o.OffloadActive()
		r.gsoOut, _ = cfg.TAP.(tap.GSOWriter)
	}
	r.free = make(chan *worker, maxIdleWorkers)
	return r, nil
}

// SetForwarder attaches the overlay that carries frames to neighbours.
func (r *Switch) SetForwarder(f overlay.Forwarder) { r.fwd.Store(&fwdBox{f}) }

// Start takes the mesh's routes, builds the first route table and starts the goroutines. It
// does not block; call it once.
func (r *Switch) Start(routes Routes) {
	r.routes = routes
	r.rebuild()
	queues := []tap.Device{r.tap}
	if mq, ok := r.tap.(tap.MultiQueue); ok && len(mq.Queues()) > 0 {
		queues = mq.Queues()
	}
	r.wg.Add(len(queues) + 1)
	for _, q := range queues {
		go r.routineReadTAP(q)
	}
	go r.routineHousekeeping()
}

// Close stops the goroutines and closes the TAP; idempotent.
func (r *Switch) Close() error {
	var err error
	r.once.Do(func() {
		close(r.closed)
		err = r.tap.Close()
		r.wg.Wait()
	})
	return err
}

// RoutesChanged tells the switch that the mesh's routes changed; it never blocks (the mesh
// calls it with its own locks released, and the rebuild happens on the housekeeping
// goroutine).
func (r *Switch) RoutesChanged() {
	select {
	case r.dirty <- struct{}{}:
	default:
	}
}

// PeerGone forgets every MAC learned from peer (the mesh garbage-collected it).
func (r *Switch) PeerGone(peer mesh.PeerName) {
	if gone := r.macs.forgetPeer(peer); len(gone) > 0 {
		r.forget(gone)
		r.log.Debug("forgot MACs of a removed peer", logx.KeyPeer, peer.String(), logx.KeyCount, len(gone))
	}
	r.RoutesChanged()
}

// Owner returns the peer that owns mac, as learned so far.
func (r *Switch) Owner(mac net.HardwareAddr) (mesh.PeerName, bool) {
	if len(mac) != 6 {
		return 0, false
	}
	return r.macs.get(frame.MAC(mac))
}

// NextHop returns the neighbour the switch currently sends dst's frames to.
func (r *Switch) NextHop(dst mesh.PeerName) (mesh.PeerName, bool) {
	return r.unicastHop(r.table.Load(), dst)
}

// BroadcastHops returns the neighbours the switch currently passes origin's broadcasts to.
func (r *Switch) BroadcastHops(origin mesh.PeerName) []mesh.PeerName {
	return slices.Clone(r.table.Load().bcast[origin])
}

// Stats returns the counters.
func (r *Switch) Stats() Stats {
	c := &r.stats
	return Stats{
		TAPFramesIn: c.tapIn.Load(), TAPFramesOut: c.tapOut.Load(), Relayed: c.relayed.Load(),
		NoRoute: c.noRoute.Load(), Oversize: c.oversize.Load(), ICMPSent: c.icmp.Load(),
		Fragmented: c.frag.Load(), Malformed: c.malformed.Load(), MACMoves: c.moves.Load(),
		TAPWriteErrors: c.tapErr.Load(), KernelCarried: c.kernel.Load(), KernelRelayOnly: c.relayOnly.Load(),
		GSOWhole: c.gsoWhole.Load(), GSOCut: c.gsoCut.Load(),
	}
}

// rebuild replaces the route table. Called from Start and then only from the housekeeping
// goroutine.
func (r *Switch) rebuild() {
	var src Routes = r.routes
	if s, ok := r.routes.(snapshotter); ok {
		r.snap = s.Routes()
		src = snapshotRoutes{r.snap, r.routes}
	}
	peers := src.Peers()
	t := &routeTable{
		unicast: make(map[mesh.PeerName]mesh.PeerName, len(peers)),
		bcast:   make(map[mesh.PeerName][]mesh.PeerName, len(peers)),
	}
	for _, p := range peers {
		if hop, ok := src.UnicastNextHop(p); ok {
			t.unicast[p] = hop
		}
		t.bcast[p] = src.BroadcastNextHops(p)
	}
	r.table.Store(t)
}

// snapshotRoutes reads one consistent snapshot (peers still come from the mesh).
type snapshotRoutes struct {
	s *mesh.RouteSnapshot
	Routes
}

func (s snapshotRoutes) UnicastNextHop(dst mesh.PeerName) (mesh.PeerName, bool) {
	return s.s.UnicastNextHop(dst)
}

func (s snapshotRoutes) BroadcastNextHops(origin mesh.PeerName) []mesh.PeerName {
	return s.s.BroadcastNextHops(origin)
}

// routesMoved reports whether the mesh has recomputed its routes since the last rebuild.
func (r *Switch) routesMoved() bool {
	s, ok := r.routes.(snapshotter)
	return ok && s.Routes() != r.snap
}

// broadcastHops returns the hops of origin's tree; an origin we have not heard of yet (its
// topology arrived after our last rebuild) is asked for directly.
func (r *Switch) broadcastHops(t *routeTable, origin mesh.PeerName) []mesh.PeerName {
	if hops, ok := t.bcast[origin]; ok {
		return hops
	}
	if r.routes == nil {
		return nil // not started
	}
	r.RoutesChanged()
	return r.routes.BroadcastNextHops(origin)
}

func (r *Switch) unicastHop(t *routeTable, dst mesh.PeerName) (mesh.PeerName, bool) {
	if hop, ok := t.unicast[dst]; ok {
		return hop, true
	}
	return 0, false
}

// routineHousekeeping rebuilds the route table when told to or when the mesh's snapshot
// changed (a peer's broadcast tree can change without a callback), and expires MACs.
func (r *Switch) routineHousekeeping() {
	defer r.wg.Done()
	poll := time.NewTicker(routePoll)
	defer poll.Stop()
	lastExpiry, lastFull := time.Now(), time.Now()
	for {
		select {
		case <-r.closed:
			return
		case <-r.dirty:
			r.rebuild()
		case now := <-poll.C:
			if r.routesMoved() || now.Sub(lastFull) > 5*time.Second {
				lastFull = now
				r.rebuild()
			}
			if now.Sub(lastExpiry) > r.macs.maxAge/10 {
				lastExpiry = now
				if gone := r.macs.expire(now.UnixNano(), r.name); len(gone) > 0 {
					r.forget(gone)
					r.log.Debug("expired MACs", logx.KeyCount, len(gone))
				}
			}
		}
	}
}

// forget tells the Learner that remote MACs are gone.
func (r *Switch) forget(macs []frame.MAC) {
	if r.learnr == nil {
		return
	}
	for _, m := range macs {
		r.learnr.Forget(net.HardwareAddr(m[:]))
	}
}

// routineReadTAP reads batches of frames from one TAP queue and forwards them.
func (r *Switch) routineReadTAP(dev tap.Device) {
	defer r.wg.Done()
	w := newWorker(r, dev.MTU())
	gr, gso := dev.(tap.GSOReader)
	gso = gso && r.gsoIn
	if gso {
		w.readGSO = make([]frame.VirtioNetHdr, len(w.readBufs))
		for i := range w.readBufs {
			w.readBufs[i] = make([]byte, tap.Headroom+tap.MaxFrameSize)
		}
	}
	for {
		var n int
		var err error
		if gso {
			n, err = gr.ReadGSO(w.readBufs, w.readSizes, w.readGSO, tap.Headroom)
		} else {
			n, err = dev.Read(w.readBufs, w.readSizes, tap.Headroom)
		}
		if err != nil {
			if overlay.ReadFailed(err, r.closed, r.log, "tap read failed") {
				return
			}
			continue
		}
		w.handleCaptured(n)
	}
}

// Receive implements overlay.Receiver.
func (r *Switch) Receive(from mesh.PeerName, frames []overlay.Frame) {
	var w *worker
	select {
	case w = <-r.free:
	default:
		w = newWorker(r, 0)
	}
	w.handleForwarded(frames)
	select {
	case r.free <- w:
	default:
	}
}

// writeTAP writes frames to the bridge; each buffer has tapOffset bytes in front. gso is
// nil, or describes each frame (only a GSOWriter TAP is given super-frames).
func (r *Switch) writeTAP(bufs [][]byte, gso []frame.VirtioNetHdr) {
	if len(bufs) == 0 {
		return
	}
	var n int
	var err error
	if gso != nil {
		n, err = r.gsoOut.WriteGSO(bufs, gso, tapOffset)
	} else {
		n, err = r.tap.Write(bufs, tapOffset) // serialised by the device
	}

	r.stats.tapOut.Add(uint64(n))
	if err != nil {
		r.stats.tapErr.Add(uint64(len(bufs) - n))
		if !errors.Is(err, net.ErrClosed) {
			r.log.Debug("tap write failed", logx.KeyErr, fmt.Errorf("tap write: %w", err))
		}
	}
}
