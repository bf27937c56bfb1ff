package ipam

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weavemesh/weave/mesh"
)

// fakeNet is an in-memory gossip mesh for allocators: messages queue up and are delivered by
// step (deterministic simulations) or by a pump goroutine. It can lose messages, cut links
// (partitions) and take peers down; its Peers view follows that.
type fakeNet struct {
	mu     sync.Mutex
	rnd    *rand.Rand
	nodes  map[mesh.PeerName]*Allocator
	up     map[mesh.PeerName]bool
	deadAt map[mesh.PeerName]time.Time
	cut    map[[2]mesh.PeerName]bool
	queue  []fakeMsg
	loss   float64
	kick   chan struct{}

	clock     atomic.Int64 // unix nanos
	delivered atomic.Int64
	dropped   atomic.Int64
}

type msgKind int

const (
	kindUnicast msgKind = iota
	kindBroadcast
	kindGossip
)

type fakeMsg struct {
	kind     msgKind
	from, to mesh.PeerName
	data     []byte
}

func newFakeNet(seed uint64) *fakeNet {
	n := &fakeNet{
		rnd:    rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		nodes:  map[mesh.PeerName]*Allocator{},
		up:     map[mesh.PeerName]bool{},
		deadAt: map[mesh.PeerName]time.Time{},
		cut:    map[[2]mesh.PeerName]bool{},
		kick:   make(chan struct{}, 1),
	}
	n.clock.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return n
}

func (n *fakeNet) now() time.Time          { return time.Unix(0, n.clock.Load()) }
func (n *fakeNet) advance(d time.Duration) { n.clock.Add(int64(d)) }

// config returns a Config for peer p wired to the net's clock and peer view.
func (n *fakeNet) config(p mesh.PeerName, init string, store Store) Config {
	return Config{
		Range: netip.MustParsePrefix("10.32.0.0/22"), Init: init, Name: p, NickName: fmt.Sprintf("h%d", p),
		UID: uint64(p)*1000 + uint64(n.rnd.IntN(1000)), Peers: fakePeers{n, p}, Now: n.now,
		TickInterval: -1, Store: store,
	}
}

// start creates an allocator for p, registers it and marks it up.
func (n *fakeNet) start(t testing.TB, cfg Config) *Allocator {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatalf("new allocator %v: %v", cfg.Name, err)
	}
	n.mu.Lock()
	n.nodes[cfg.Name] = a
	n.up[cfg.Name] = true
	delete(n.deadAt, cfg.Name)
	n.mu.Unlock()
	a.SetGossip(fakeGossip{n, cfg.Name})
	return a
}

// stop closes p's allocator and marks it down (dead from now on).
func (n *fakeNet) stop(p mesh.PeerName) {
	n.mu.Lock()
	a := n.nodes[p]
	delete(n.nodes, p)
	n.up[p] = false
	n.deadAt[p] = n.now()
	n.mu.Unlock()
	if a != nil {
		a.Close()
	}
}

func (n *fakeNet) setCut(a, b mesh.PeerName, cut bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if a > b {
		a, b = b, a
	}
	if cut {
		n.cut[[2]mesh.PeerName{a, b}] = true
	} else {
		delete(n.cut, [2]mesh.PeerName{a, b})
	}
}

func (n *fakeNet) healAll() {
	n.mu.Lock()
	defer n.mu.Unlock()
	clear(n.cut)
}

func (n *fakeNet) isCut(a, b mesh.PeerName) bool {
	if a > b {
		a, b = b, a
	}
	return n.cut[[2]mesh.PeerName{a, b}]
}

func (n *fakeNet) enqueue(m fakeMsg) {
	n.mu.Lock()
	n.queue = append(n.queue, m)
	n.mu.Unlock()
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

func (n *fakeNet) others(self mesh.PeerName) []mesh.PeerName {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []mesh.PeerName
	for p := range n.up {
		if p != self {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// deliverOne pops a random message (FIFO when ordered) and hands it over; false when the
// queue is empty.
func (n *fakeNet) deliverOne(ordered bool) bool {
	n.mu.Lock()
	if len(n.queue) == 0 {
		n.mu.Unlock()
		return false
	}
	i := 0
	if !ordered {
		i = n.rnd.IntN(len(n.queue))
	}
	m := n.queue[i]
	n.queue = append(n.queue[:i], n.queue[i+1:]...)
	dst := n.nodes[m.to]
	drop := dst == nil || !n.up[m.from] || n.isCut(m.from, m.to) || (n.loss > 0 && n.rnd.Float64() < n.loss)
	n.mu.Unlock()
	if drop {
		n.dropped.Add(1)
		return true
	}
	n.delivered.Add(1)
	switch m.kind {
	case kindUnicast:
		_ = dst.OnGossipUnicast(m.from, m.data)
	case kindBroadcast:
		_, _ = dst.OnGossipBroadcast(m.from, m.data)
	case kindGossip:
		if delta, err := dst.OnGossip(m.data); err == nil && delta != nil {
			fakeGossip{n, m.to}.GossipNeighbourSubset(delta)
		}
	}
	return true
}

// flush delivers until the queue is empty (bounded, so a message storm fails loudly).
func (n *fakeNet) flush(t testing.TB, ordered bool) {
	t.Helper()
	for i := 0; n.deliverOne(ordered); i++ {
		if i > 1_000_000 {
			t.Fatal("gossip does not quiesce")
		}
	}
}

// gossipRound has every up peer send its full state to every other (periodic gossip).
func (n *fakeNet) gossipRound() {
	n.mu.Lock()
	nodes := make(map[mesh.PeerName]*Allocator, len(n.nodes))
	for p, a := range n.nodes {
		nodes[p] = a
	}
	n.mu.Unlock()
	for _, p := range slices.Sorted(maps.Keys(nodes)) {
		if d := nodes[p].Gossip(); d != nil {
			for _, b := range d.Encode() {
				for _, q := range n.others(p) {
					n.enqueue(fakeMsg{kindGossip, p, q, b})
				}
			}
		}
	}
}

// pump delivers in order in the background until ctx ends.
func (n *fakeNet) pump(ctx context.Context) {
	for {
		for n.deliverOne(true) {
		}
		select {
		case <-ctx.Done():
			return
		case <-n.kick:
		}
	}
}

type fakeGossip struct {
	n    *fakeNet
	self mesh.PeerName
}

func (g fakeGossip) GossipUnicast(dst mesh.PeerName, msg []byte) error {
	g.n.enqueue(fakeMsg{kindUnicast, g.self, dst, append([]byte(nil), msg...)})
	return nil
}

func (g fakeGossip) GossipBroadcast(update mesh.GossipData) {
	for _, b := range update.Encode() {
		for _, q := range g.n.others(g.self) {
			g.n.enqueue(fakeMsg{kindBroadcast, g.self, q, b})
		}
	}
}

func (g fakeGossip) GossipNeighbourSubset(update mesh.GossipData) {
	others := g.n.others(g.self)
	g.n.mu.Lock()
	g.n.rnd.Shuffle(len(others), func(i, j int) { others[i], others[j] = others[j], others[i] })
	g.n.mu.Unlock()
	for _, b := range update.Encode() {
		for _, q := range others[:min(3, len(others))] {
			g.n.enqueue(fakeMsg{kindGossip, g.self, q, b})
		}
	}
}

type fakePeers struct {
	n    *fakeNet
	self mesh.PeerName
}

func (f fakePeers) IsReachable(p mesh.PeerName) bool {
	f.n.mu.Lock()
	defer f.n.mu.Unlock()
	return f.n.up[p] && !f.n.isCut(f.self, p)
}

func (f fakePeers) NickName(p mesh.PeerName) string { return fmt.Sprintf("h%d", p) }

func (f fakePeers) DeadSince(p mesh.PeerName) (time.Time, bool) {
	f.n.mu.Lock()
	defer f.n.mu.Unlock()
	t, ok := f.n.deadAt[p]
	return t, ok && !f.n.up[p]
}
