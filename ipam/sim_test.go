package ipam

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/weavemesh/weave/ipam/addr"
	"github.com/weavemesh/weave/mesh"
)

// simulation drives allocators over a lossy, partitioned fake mesh, one step at a time,
// against a model of what each peer has handed out.
type simulation struct {
	t       *testing.T
	rnd     *rand.Rand
	net     *fakeNet
	peers   []mesh.PeerName
	stores  map[mesh.PeerName]*MemStore
	nodes   map[mesh.PeerName]*Allocator
	reclaim time.Duration
	// loseDBs: a stopped peer that had a ring loses its database half the time; it comes
	// back with its membership record and the addresses its containers hold (the model).
	loseDBs  bool
	lost     map[mesh.PeerName]bool // lost its database at least once
	dir      string
	model    map[mesh.PeerName]map[Key]netip.Prefix // what Allocate/Claim returned, minus releases
	holder   map[netip.Addr]simOp                   // who holds each address (without reclaim)
	pending  []simOp
	nextKey  int
	stats    simStats
	duration time.Duration
}

type simOp struct {
	peer mesh.PeerName
	key  Key
}

type simStats struct {
	allocs, claims, claimRefused, releases, restarts, partitions, maxLive, lostDBs int
	reclaimed                                                                      uint64
}

const simRange = "10.32.0.0/21" // 2048 addresses, so peers run out and borrow

func newSimulation(t *testing.T, seed uint64, n int, reclaim time.Duration) *simulation {
	return newSimulationLosingDBs(t, seed, n, reclaim, false)
}

func newSimulationLosingDBs(t *testing.T, seed uint64, n int, reclaim time.Duration, loseDBs bool) *simulation {
	s := &simulation{
		t: t, rnd: rand.New(rand.NewPCG(seed, 99)), net: newFakeNet(seed),
		stores: map[mesh.PeerName]*MemStore{}, nodes: map[mesh.PeerName]*Allocator{},
		model: map[mesh.PeerName]map[Key]netip.Prefix{}, reclaim: reclaim, holder: map[netip.Addr]simOp{},
		loseDBs: loseDBs, lost: map[mesh.PeerName]bool{},
	}
	if loseDBs {
		s.dir = t.TempDir()
	}
	s.net.loss = 0.05
	for i := range n {
		p := mesh.PeerName(0x10 + i)
		s.peers = append(s.peers, p)
		s.stores[p] = &MemStore{}
		s.model[p] = map[Key]netip.Prefix{}
	}
	for _, p := range s.peers {
		s.start(p)
	}
	return s
}

func (s *simulation) config(p mesh.PeerName) Config {
	c := s.net.config(p, fmt.Sprintf("consensus=%d", len(s.peers)), s.stores[p])
	c.Range = netip.MustParsePrefix(simRange)
	c.ReclaimAfter = s.reclaim
	if s.loseDBs {
		c.MemberPath = fmt.Sprintf("%s/member-%v", s.dir, uint64(p))
		if s.lost[p] {
			// Relaunched without arguments: on its own, consensus would need only itself.
			c.Init, c.InitialPeerCount = "consensus", 1
		}
		c.InUse = map[Key][]netip.Prefix{}
		for k, pf := range s.model[p] {
			c.InUse[k] = []netip.Prefix{pf}
		}
	}
	return c
}

func (s *simulation) start(p mesh.PeerName) {
	a := s.net.start(s.t, s.config(p))
	s.nodes[p] = a
	// Zero lost persistent allocations: a restarted peer has everything it handed out.
	got := a.Owned()
	for k, want := range s.model[p] {
		if len(got[k]) != 1 || got[k][0] != want {
			s.t.Fatalf("peer %v lost allocation %v=%v across restart (has %v)", p, k, want, got[k])
		}
	}
}

func (s *simulation) up() []mesh.PeerName {
	var out []mesh.PeerName
	for _, p := range s.peers {
		if s.nodes[p] != nil {
			out = append(out, p)
		}
	}
	return out
}

// holders maps every address in the model to who holds it.
func (s *simulation) holders() map[netip.Addr][]string {
	h := map[netip.Addr][]string{}
	for p, m := range s.model {
		for k, pf := range m {
			h[pf.Addr()] = append(h[pf.Addr()], fmt.Sprintf("%v:%v", p, k))
		}
	}
	return h
}

// add records an allocation; without reclaim, an address already held by someone else
// is a duplicate and fails the test on the spot.
func (s *simulation) add(op simOp, pf netip.Prefix) {
	s.model[op.peer][op.key] = pf
	if s.reclaim != 0 {
		return
	}
	if h, ok := s.holder[pf.Addr()]; ok && h != op {
		s.t.Fatalf("%v handed out twice: %v and %v", pf.Addr(), h, op)
	}
	s.holder[pf.Addr()] = op
}

func (s *simulation) remove(op simOp) {
	pf := s.model[op.peer][op.key]
	delete(s.model[op.peer], op.key)
	if h, ok := s.holder[pf.Addr()]; ok && h == op {
		delete(s.holder, pf.Addr())
	}
}

func (s *simulation) checkNoDuplicates() {
	for ad, hs := range s.holders() {
		if len(hs) > 1 {
			s.t.Fatalf("%v handed out twice: %v", ad, hs)
		}
	}
}

func (s *simulation) live() int {
	n := 0
	for _, m := range s.model {
		n += len(m)
	}
	return n
}

func (s *simulation) tryAlloc(op simOp) bool {
	a := s.nodes[op.peer]
	if a == nil {
		return true // its peer went down before it was served: drop the request
	}
	p, _, done, err := a.tryAllocate(op.key, a.cfg.DefaultSubnet, a.cfg.subnet)
	if !done {
		return false
	}
	if err != nil {
		s.t.Fatalf("allocate %v on %v: %v", op.key, op.peer, err)
	}
	if prev, ok := s.model[op.peer][op.key]; ok && prev != p {
		s.t.Fatalf("%v on %v got %v, had %v", op.key, op.peer, p, prev)
	}
	s.add(op, p)
	s.stats.allocs++
	return true
}

func (s *simulation) step(i int) {
	up := s.up()
	if len(up) == 0 {
		return
	}
	pick := func() mesh.PeerName { return up[s.rnd.IntN(len(up))] }
	switch r := s.rnd.IntN(100); {
	case r < 30: // a new container asks for an address
		if s.live()+len(s.pending) >= 1500 {
			break
		}
		s.nextKey++
		op := simOp{pick(), Key{fmt.Sprintf("c%d", s.nextKey), "ethwe"}}
		if !s.tryAlloc(op) {
			s.pending = append(s.pending, op)
		}
	case r < 50: // a container goes away
		p := pick()
		keys := make([]Key, 0, len(s.model[p]))
		for k := range s.model[p] {
			keys = append(keys, k)
		}
		if len(keys) == 0 {
			break
		}
		slices.SortFunc(keys, func(a, b Key) int {
			if a.ID < b.ID {
				return -1
			}
			if a.ID > b.ID {
				return 1
			}
			return 0
		})
		k := keys[s.rnd.IntN(len(keys))]
		if n, err := s.nodes[p].Release(k.ID, k.Iface); n != 1 || err != nil {
			s.t.Fatalf("release %v on %v: %d %v", k, p, n, err)
		}
		s.remove(simOp{p, k})
		s.stats.releases++
	case r < 53: // a container restarts asking for an exact address
		p := pick()
		a := s.nodes[p]
		ip := addr.Addr(a.cfg.rng.Start+1) + addr.Addr(s.rnd.IntN(int(a.cfg.rng.Size())-2))
		s.nextKey++
		k := Key{fmt.Sprintf("claim%d", s.nextKey), "ethwe"}
		pf := netip.PrefixFrom(ip.Netip(), 21)
		_, done, err := a.tryClaim(k, pf, ip)
		switch {
		case done && err == nil:
			s.add(simOp{p, k}, pf)
			s.stats.claims++
		case done:
			s.stats.claimRefused++
		default:
			// Waiting for the owner: give up, as a caller whose context ends would.
			a.mu.Lock()
			delete(a.wanted, ip)
			a.mu.Unlock()
		}
	case r < 80: // the network delivers some messages
		for range 1 + s.rnd.IntN(60) {
			s.net.deliverOne(false)
		}
	case r < 84:
		s.net.gossipRound()
	case r < 90: // time passes
		s.net.advance(time.Duration(1+s.rnd.IntN(5)) * time.Second)
		for _, p := range up {
			s.nodes[p].Tick()
		}
	case r < 93: // partitions come and go
		a, b := pick(), s.peers[s.rnd.IntN(len(s.peers))]
		if a != b {
			s.net.setCut(a, b, s.rnd.IntN(3) != 0)
			s.stats.partitions++
		}
		if s.rnd.IntN(4) == 0 {
			s.net.healAll()
		}
	case r < 95: // a peer restarts (or comes back)
		var down []mesh.PeerName
		for _, p := range s.peers {
			if s.nodes[p] == nil {
				down = append(down, p)
			}
		}
		if len(down) > 0 && s.rnd.IntN(2) == 0 {
			s.start(down[s.rnd.IntN(len(down))])
			break
		}
		p := pick()
		s.stats.reclaimed += s.nodes[p].Counts().Reclaimed
		if s.loseDBs && s.nodes[p].Ready() && s.ringSurvivesElsewhere(p) && s.rnd.IntN(2) == 0 {
			s.stores[p] = &MemStore{}
			s.lost[p] = true
			s.stats.lostDBs++
		}
		s.net.stop(p)
		s.nodes[p] = nil
		s.stats.restarts++
		if s.reclaim == 0 && s.rnd.IntN(2) == 0 {
			s.start(p)
		}
	default: // waiting requests look again
		var still []simOp
		for _, op := range s.pending {
			if !s.tryAlloc(op) {
				still = append(still, op)
			}
		}
		s.pending = still
	}
	s.stats.maxLive = max(s.stats.maxLive, s.live())
}

// ringSurvivesElsewhere: another peer's database holds the ring. When every copy is lost
// the peers rightly wait for one forever (the operator must remove their membership
// records); the simulation never goes there.
func (s *simulation) ringSurvivesElsewhere(p mesh.PeerName) bool {
	for _, q := range s.peers {
		if q == p {
			continue
		}
		st := s.stores[q]
		st.mu.Lock()
		saved := st.ring != nil
		st.mu.Unlock()
		if saved {
			return true
		}
	}
	return false
}

// settle heals everything, brings every peer up and gossips until the rings agree and
// nothing is waiting.
func (s *simulation) settle() {
	s.net.healAll()
	s.net.loss = 0
	for _, p := range s.peers {
		if s.nodes[p] == nil {
			s.start(p)
		}
	}
	for round := 0; ; round++ {
		if round > 500 {
			for _, op := range s.pending[:min(3, len(s.pending))] {
				st := s.nodes[op.peer].Status()
				st.Entries = nil
				s.t.Logf("waiting %v on %v: %+v", op.key, op.peer, st)
			}
			s.t.Fatalf("no convergence: %d requests still waiting, rings agree %v", len(s.pending), s.ringsAgree())
		}
		s.net.gossipRound()
		s.net.flush(s.t, false)
		s.net.advance(5 * time.Second)
		for _, p := range s.peers {
			s.nodes[p].Tick()
		}
		s.net.flush(s.t, false)
		var still []simOp
		for _, op := range s.pending {
			if !s.tryAlloc(op) {
				still = append(still, op)
			}
		}
		s.pending = still
		s.net.flush(s.t, false)
		if len(s.pending) == 0 && s.ringsAgree() && s.orphansSettled() {
			return
		}
	}
}

// orphansSettled: every address a peer uses without owning it has been refused by its
// owner (and is reported as a conflict); no re-claim is still in flight.
func (s *simulation) orphansSettled() bool {
	for _, p := range s.peers {
		a := s.nodes[p]
		a.mu.Lock()
		for _, r := range a.space.Orphans() {
			for ad := r.Start; ad < r.End; ad++ {
				if _, ok := a.conflicts[ad]; !ok {
					a.mu.Unlock()
					return false
				}
			}
		}
		a.mu.Unlock()
	}
	return true
}

func (s *simulation) ringsAgree() bool {
	first := s.nodes[s.peers[0]]
	first.mu.Lock()
	r0 := first.ring.Clone()
	first.mu.Unlock()
	for _, p := range s.peers[1:] {
		a := s.nodes[p]
		a.mu.Lock()
		eq := a.ring.Equal(r0)
		a.mu.Unlock()
		if !eq {
			return false
		}
	}
	return !r0.Empty()
}

// checkAccounting: every address is owned by exactly one peer, each peer's space matches
// the ring, and every address in use sits in its holder's own space (or is a reported
// conflict).
func (s *simulation) checkAccounting() {
	var total uint64
	for _, p := range s.peers {
		a := s.nodes[p]
		a.mu.Lock()
		if err := a.ring.Check(); err != nil {
			s.t.Fatal(err)
		}
		own := a.ring.OwnedBy(p)
		if !slices.Equal(own, a.space.Owned()) {
			s.t.Fatalf("peer %v: space %v, ring %v", p, a.space.Owned(), own)
		}
		for _, r := range own {
			total += uint64(r.Size())
		}
		used := a.space.NumOwned() - a.space.NumFree()
		for _, r := range a.space.Orphans() {
			for ad := r.Start; ad < r.End; ad++ {
				if _, reported := a.conflicts[ad]; !reported {
					s.t.Errorf("peer %v uses %v without owning it and without a conflict report", p, ad)
				}
			}
		}
		inRange := 0
		for ip := range a.byAddr {
			if ad, ok := addr.FromNetip(ip); ok && a.cfg.rng.Contains(ad) && a.space.Owns(ad) {
				inRange++
			}
		}
		if uint64(inRange) != used {
			s.t.Errorf("peer %v: %d addresses in use in its space, space says %d", p, inRange, used)
		}
		a.mu.Unlock()
	}
	if total != 2048 {
		s.t.Fatalf("peers own %d addresses of 2048", total)
	}
}

func TestSimulationNoDuplicatesNoLoss(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			start := time.Now()
			s := newSimulation(t, seed, 10, 0)
			for i := range 6000 {
				s.step(i)
			}
			s.settle()
			s.checkNoDuplicates()
			s.checkAccounting()
			t.Logf("seed %d: %+v live=%d delivered=%d dropped=%d wall=%v", seed, s.stats, s.live(),
				s.net.delivered.Load(), s.net.dropped.Load(), time.Since(start).Round(time.Millisecond))
			for _, a := range s.nodes {
				a.Close()
			}
		})
	}
}

// TestSimulationLostDatabases: peers that lose their database while stopped (deleted,
// emptied) rejoin the ring and never hand out an address another container holds.
func TestSimulationLostDatabases(t *testing.T) {
	for _, seed := range []uint64{5, 6, 7} {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			start := time.Now()
			s := newSimulationLosingDBs(t, seed, 6, 0, true)
			for i := range 6000 {
				s.step(i)
			}
			s.settle()
			s.checkNoDuplicates()
			s.checkAccounting()
			if s.stats.lostDBs == 0 {
				t.Fatal("no database was lost: the test does not test the loss")
			}
			t.Logf("seed %d: %+v live=%d delivered=%d dropped=%d wall=%v", seed, s.stats, s.live(),
				s.net.delivered.Load(), s.net.dropped.Load(), time.Since(start).Round(time.Millisecond))
			for _, a := range s.nodes {
				a.Close()
			}
		})
	}
}

// With automatic reclaim, a peer that comes back after its space was taken may find its
// addresses reused: that must be reported on the peer that holds the address without owning
// it, never left silent.
func TestSimulationReclaimReportsEveryDuplicate(t *testing.T) {
	for _, seed := range []uint64{4, 100} {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			start := time.Now()
			s := newSimulation(t, seed, 10, 20*time.Second)
			for i := range 5000 {
				s.step(i)
			}
			s.settle()
			s.checkAccounting()
			dups := 0
			for ad, hs := range s.holders() {
				if len(hs) < 2 {
					continue
				}
				dups++
				reported := false
				for _, p := range s.peers {
					a := s.nodes[p]
					a.mu.Lock()
					x, _ := addr.FromNetip(ad)
					_, ok := a.conflicts[x]
					a.mu.Unlock()
					reported = reported || ok
				}
				if !reported {
					t.Errorf("%v held by %v with no conflict reported", ad, hs)
				}
			}
			reclaimed := s.stats.reclaimed
			for _, a := range s.nodes {
				reclaimed += a.Counts().Reclaimed
			}
			if reclaimed == 0 {
				t.Error("nothing was reclaimed: the test does not test reclaim")
			}
			t.Logf("seed %d: %+v live=%d reclaimed=%d duplicates(reported)=%d wall=%v", seed, s.stats, s.live(),
				reclaimed, dups, time.Since(start).Round(time.Millisecond))
			for _, a := range s.nodes {
				a.Close()
			}
		})
	}
}
