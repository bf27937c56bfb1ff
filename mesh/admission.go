package mesh

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Admission of inbound connections, before any handshake byte is read. One global token
// bucket (the old design) let a single flooding address empty it and put every real peer
// behind its backlog (113 s to rejoin); so the budget is per source address, and what an
// unauthenticated source may hold at once is capped per source and in total. Refusal is
// immediate (close), never a wait in the accept loop.
const (
	// Per source: a burst, then one connection per refill.
	sourceBurst  = 8
	sourceRefill = 250 * time.Millisecond
	// Concurrent handshakes from one source, and from everyone.
	maxSourceHandshakes = 4
	maxHandshakes       = 64
	// Sources tracked at once. When the table is full, idle entries are dropped; if none is
	// idle, unknown sources share one overflow entry (so they still get a budget, a small
	// shared one, rather than none or an unbounded table).
	maxSources = 4096
	// preAuthTimeout bounds an inbound handshake: nothing about the peer is known until it
	// ends, so a slot is never held longer than this.
	preAuthTimeout = 5 * time.Second
)

// Reasons an inbound connection is refused before its handshake.
var (
	errRateLimited    = errors.New("rate limited: too many connections from this address")
	errTooManyPending = errors.New("too many handshakes in progress")
)

type sourceState struct {
	bucket tokenBucket
	active int // handshakes in progress
}

// admission tracks sources; safe for concurrent use.
type admission struct {
	mu       sync.Mutex
	sources  map[netip.Addr]*sourceState
	overflow sourceState
	active   int
}

func newAdmission() *admission {
	return &admission{sources: map[netip.Addr]*sourceState{}}
}

// sourceKey is the address a budget is charged to: the IP, and for IPv6 its /64 (one host
// usually owns a whole /64, and could otherwise take a fresh address per connection).
func sourceKey(a net.Addr) netip.Addr {
	var ip netip.Addr
	switch v := a.(type) {
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(v.IP)
	default:
		if ap, err := netip.ParseAddrPort(a.String()); err == nil {
			ip = ap.Addr()
		}
	}
	ip = ip.Unmap()
	if ip.Is6() {
		if p, err := ip.Prefix(64); err == nil {
			ip = p.Addr()
		}
	}
	return ip
}

// admit charges one connection from src. On success the caller must call the returned
// release when the handshake ends (whatever its outcome).
func (a *admission) admit(src net.Addr, now time.Time) (release func(), err error) {
	key := sourceKey(src)
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.sources[key]
	if s == nil {
		s = a.newSourceLocked(key, now)
	}
	if !s.bucket.allow(now) {
		return nil, errRateLimited
	}
	if s.active >= maxSourceHandshakes || a.active >= maxHandshakes {
		return nil, fmt.Errorf("%w (%d from this address, %d in all)", errTooManyPending, s.active, a.active)
	}
	s.active++
	a.active++
	var once sync.Once
	return func() {
		once.Do(func() {
			a.mu.Lock()
			s.active--
			a.active--
			a.mu.Unlock()
		})
	}, nil
}

func (a *admission) newSourceLocked(key netip.Addr, now time.Time) *sourceState {
	if len(a.sources) >= maxSources {
		for k, s := range a.sources {
			if s.active == 0 && s.bucket.full(now) {
				delete(a.sources, k)
			}
		}
		if len(a.sources) >= maxSources {
			if a.overflow.bucket.refill == 0 {
				a.overflow.bucket = *newTokenBucket(sourceBurst, sourceRefill, now)
			}
			return &a.overflow
		}
	}
	s := &sourceState{bucket: *newTokenBucket(sourceBurst, sourceRefill, now)}
	a.sources[key] = s
	return s
}

// tokenBucket limits a rate: burst tokens, one more every refill.
type tokenBucket struct {
	tokens float64
	burst  float64
	refill time.Duration
	last   time.Time
}

func newTokenBucket(burst int, refill time.Duration, now time.Time) *tokenBucket {
	return &tokenBucket{tokens: float64(burst), burst: float64(burst), refill: refill, last: now}
}

func (b *tokenBucket) update(now time.Time) {
	if now.After(b.last) {
		b.tokens = min(b.burst, b.tokens+float64(now.Sub(b.last))/float64(b.refill))
		b.last = now
	}
}

// allow consumes a token if there is one. Unlike a waiting limiter it never goes into debt:
// a refused attempt costs the source nothing more, so a flood that stops recovers at once.
func (b *tokenBucket) allow(now time.Time) bool {
	b.update(now)
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// full reports whether the bucket has refilled completely (its source is idle).
func (b *tokenBucket) full(now time.Time) bool {
	b.update(now)
	return b.tokens >= b.burst
}
