package l2switch

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/weavemesh/weave/mesh"
	"github.com/weavemesh/weave/tap/frame"
)

// DefaultMACMaxAge is how long a MAC stays learned without traffic: longer than ARP cache
// expiry, so a quiet but live container is not forgotten before its neighbours re-ARP (as in
// Weave).
const DefaultMACMaxAge = 10 * time.Minute

type macEntry struct {
	peer mesh.PeerName // immutable: a move replaces the entry
	seen atomic.Int64  // unix nanoseconds, refreshed at most every maxAge/10
}

// macCache maps MAC addresses to the peer that owns them. Readers take the read lock once per
// batch (see lookupLocked); changes are applied under the write lock afterwards.
type macCache struct {
	maxAge time.Duration

	mu sync.RWMutex
	m  map[frame.MAC]*macEntry
}

func newMACCache(maxAge time.Duration) *macCache {
	return &macCache{maxAge: maxAge, m: make(map[frame.MAC]*macEntry)}
}

// lookupLocked returns the owner of mac. Must hold c.mu (read).
func (c *macCache) lookupLocked(mac frame.MAC) (mesh.PeerName, bool) {
	e := c.m[mac]
	if e == nil {
		return 0, false
	}
	return e.peer, true
}

// needsLearnLocked reports whether mac must be (re)learned for peer; a current entry only has
// its timestamp refreshed, without the write lock. Must hold c.mu (read).
func (c *macCache) needsLearnLocked(mac frame.MAC, peer mesh.PeerName, now int64) bool {
	e := c.m[mac]
	if e == nil || e.peer != peer {
		return true
	}
	if now-e.seen.Load() > int64(c.maxAge/10) {
		e.seen.Store(now)
	}
	return false
}

// learn records that peer owns mac. It reports whether mac moved from another peer, and from
// which.
func (c *macCache) learn(mac frame.MAC, peer mesh.PeerName, now int64) (moved bool, from mesh.PeerName) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.m[mac]
	if e != nil && e.peer == peer {
		e.seen.Store(now)
		return false, 0
	}
	ne := &macEntry{peer: peer}
	ne.seen.Store(now)
	c.m[mac] = ne
	if e != nil {
		return true, e.peer
	}
	return false, 0
}

// expire forgets entries not seen for maxAge; it returns those that were not us (remote).
func (c *macCache) expire(now int64, us mesh.PeerName) []frame.MAC {
	c.mu.Lock()
	defer c.mu.Unlock()
	var gone []frame.MAC
	for mac, e := range c.m {
		if now-e.seen.Load() > int64(c.maxAge) {
			delete(c.m, mac)
			if e.peer != us {
				gone = append(gone, mac)
			}
		}
	}
	return gone
}

// forgetPeer drops every MAC of peer and returns them.
func (c *macCache) forgetPeer(peer mesh.PeerName) []frame.MAC {
	c.mu.Lock()
	defer c.mu.Unlock()
	var gone []frame.MAC
	for mac, e := range c.m {
		if e.peer == peer {
			delete(c.m, mac)
			gone = append(gone, mac)
		}
	}
	return gone
}

func (c *macCache) get(mac frame.MAC) (mesh.PeerName, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.lookupLocked(mac)
}
