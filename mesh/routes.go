package mesh

import (
	"maps"
	"slices"
	"sync"
)

// routeTable is an immutable snapshot of routes computed from one topology. Peers are
// indexed in name order, so sorting a BFS level by index sorts it by name: that tie-break is
// what makes every peer compute the same trees from the same topology.
//
// Two edge sets, as in Weave: "all" edges are every connection a peer reports (used for
// gossip, which must work while connections are still being confirmed), "established"
// edges need both ends to report the connection as established (used for data).
type routeTable struct {
	self   int32
	names  []PeerName
	idx    map[PeerName]int32
	adjAll [][]int32
	adjEst [][]int32

	unicast    map[PeerName]PeerName // destination -> first hop, established+symmetric edges
	unicastAll map[PeerName]PeerName // destination -> first hop, all edges

	// per-origin broadcast next hops, filled lazily (the snapshot is owned by one goroutine
	// at a time: the topology's lock holder).
	bcast    map[PeerName][]PeerName
	bcastAll map[PeerName][]PeerName
	scratch  []int32
}

func newRouteTable(self PeerName, peers map[PeerName]*peerEntry) *routeTable {
	t := &routeTable{
		names:    slices.Sorted(maps.Keys(peers)),
		idx:      make(map[PeerName]int32, len(peers)),
		bcast:    map[PeerName][]PeerName{},
		bcastAll: map[PeerName][]PeerName{},
	}
	for i, n := range t.names {
		t.idx[n] = int32(i)
	}
	t.self = t.idx[self]
	t.adjAll = make([][]int32, len(t.names))
	t.adjEst = make([][]int32, len(t.names))
	// est[i][k]: peer i reports its connection to adjAll[i][k] as established. Conns are
	// sorted by name, so each adjAll[i] is sorted by index and the reverse edge is found by
	// binary search.
	est := make([][]bool, len(t.names))
	for i, n := range t.names {
		e := peers[n]
		t.adjAll[i] = make([]int32, 0, len(e.Conns))
		est[i] = make([]bool, 0, len(e.Conns))
		for _, c := range e.Conns {
			j, ok := t.idx[c.Name]
			if !ok || j == int32(i) {
				continue
			}
			t.adjAll[i] = append(t.adjAll[i], j)
			est[i] = append(est[i], c.Established)
		}
	}
	for i := range t.adjAll {
		for k, j := range t.adjAll[i] {
			if !est[i][k] {
				continue
			}
			if b, ok := slices.BinarySearch(t.adjAll[j], int32(i)); ok && est[j][b] {
				t.adjEst[i] = append(t.adjEst[i], j)
			}
		}
	}
	t.scratch = make([]int32, len(t.names))
	t.unicast = t.firstHops(t.adjEst)
	t.unicastAll = t.firstHops(t.adjAll)
	return t
}

// bfs walks from src level by level (each level in name order) and records each reached
// peer's first hop from src in hop (-1: not reached). It stops when it dequeues stop and
// reports whether it did.
func (t *routeTable) bfs(src, stop int32, adj [][]int32, hop []int32) bool {
	for i := range hop {
		hop[i] = -1
	}
	hop[src] = src
	level := []int32{src}
	var next []int32
	for len(level) > 0 {
		slices.Sort(level)
		next = next[:0]
		for _, cur := range level {
			if cur == stop {
				return true
			}
			for _, nb := range adj[cur] {
				if hop[nb] != -1 {
					continue
				}
				if cur == src {
					hop[nb] = nb
				} else {
					hop[nb] = hop[cur]
				}
				next = append(next, nb)
			}
		}
		level, next = next, level
	}
	return false
}

func (t *routeTable) firstHops(adj [][]int32) map[PeerName]PeerName {
	t.bfs(t.self, -1, adj, t.scratch)
	m := make(map[PeerName]PeerName, len(t.names))
	for i, h := range t.scratch {
		if h >= 0 && int32(i) != t.self {
			m[t.names[i]] = t.names[h]
		}
	}
	return m
}

// broadcastHops returns the neighbours this peer forwards origin's broadcast to: those not
// yet reached when a BFS from origin dequeues us. Every peer running this on the same
// topology gets one shortest-path tree, so each broadcast reaches each peer once.
func (t *routeTable) broadcastHops(origin PeerName, all bool) []PeerName {
	cache, adj := t.bcast, t.adjEst
	if all {
		cache, adj = t.bcastAll, t.adjAll
	}
	if hops, ok := cache[origin]; ok {
		return hops
	}
	var hops []PeerName
	if o, ok := t.idx[origin]; ok {
		if t.bfs(o, t.self, adj, t.scratch) {
			for _, nb := range adj[t.self] {
				if t.scratch[nb] == -1 {
					hops = append(hops, t.names[nb])
				}
			}
		}
	}
	cache[origin] = hops
	return hops
}

// clone returns a table sharing the immutable parts (names, adjacency, unicast maps) with
// its own caches and scratch space, for use by another goroutine.
func (t *routeTable) clone() *routeTable {
	c := *t
	c.bcast = map[PeerName][]PeerName{}
	c.bcastAll = map[PeerName][]PeerName{}
	c.scratch = make([]int32, len(t.names))
	return &c
}

// RouteSnapshot is the routes at one moment, safe for concurrent use. A data plane takes one
// per batch of frames (Router.Routes) rather than locking the router per frame.
type RouteSnapshot struct {
	src *routeTable // the topology's table this was cloned from
	mu  sync.Mutex  // guards rt's lazily filled broadcast caches
	rt  *routeTable
}

// UnicastNextHop returns the neighbour to send data for dst to (established, symmetric
// connections only).
func (s *RouteSnapshot) UnicastNextHop(dst PeerName) (PeerName, bool) {
	hop, ok := s.rt.unicast[dst]
	return hop, ok
}

// BroadcastNextHops returns the neighbours to forward origin's broadcast data to. The
// caller must not modify the slice.
func (s *RouteSnapshot) BroadcastNextHops(origin PeerName) []PeerName {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rt.broadcastHops(origin, false)
}

// Reachable reports whether data can reach dst.
func (s *RouteSnapshot) Reachable(dst PeerName) bool {
	_, ok := s.rt.unicast[dst]
	return ok
}
