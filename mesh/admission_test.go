package mesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/testutil"
)

func tcpAddr(s string) net.Addr {
	a, err := net.ResolveTCPAddr("tcp", s)
	if err != nil {
		panic(err)
	}
	return a
}

// TestAdmissionPerSource: one source's flood uses up its own budget only; its concurrent
// handshakes are capped, and so are everyone's together.
func TestAdmissionPerSource(t *testing.T) {
	a := newAdmission()
	now := time.Unix(100, 0)
	flood, other := tcpAddr("192.0.2.1:40000"), tcpAddr("192.0.2.2:40000")
	admitted := 0
	for range 2000 {
		if release, err := a.admit(flood, now); err == nil {
			admitted++
			release()
		} else if !errors.Is(err, errRateLimited) {
			t.Fatalf("flood refused for %v, want rate limited", err)
		}
	}
	if admitted != sourceBurst {
		t.Fatalf("flood got %d handshakes at once, want the burst %d", admitted, sourceBurst)
	}
	if _, err := a.admit(other, now); err != nil {
		t.Fatalf("another source refused during the flood: %v", err)
	}

	// Concurrency per source: slots held, not released.
	now = now.Add(time.Hour)
	for i := range maxSourceHandshakes {
		if _, err := a.admit(flood, now); err != nil {
			t.Fatalf("handshake %d refused: %v", i, err)
		}
	}
	if _, err := a.admit(flood, now); !errors.Is(err, errTooManyPending) {
		t.Fatalf("handshake over the per-source cap: %v", err)
	}
	// IPv6: one /64 is one source.
	v6a, v6b := tcpAddr("[2001:db8::1]:1"), tcpAddr("[2001:db8::2]:1")
	var releases []func()
	for range maxSourceHandshakes {
		r, err := a.admit(v6a, now)
		if err != nil {
			t.Fatal(err)
		}
		releases = append(releases, r)
	}
	if _, err := a.admit(v6b, now); !errors.Is(err, errTooManyPending) {
		t.Fatalf("same /64 not charged as one source: %v", err)
	}
	for _, r := range releases {
		r()
		r() // idempotent
	}
	if _, err := a.admit(v6b, now); err != nil {
		t.Fatalf("slots not returned: %v", err)
	}

	// Global cap: many sources, each within its own budget.
	b := newAdmission()
	for i := range maxHandshakes {
		if _, err := b.admit(tcpAddr(fmt.Sprintf("10.1.%d.%d:1", i/250, i%250+1)), now); err != nil {
			t.Fatalf("source %d refused: %v", i, err)
		}
	}
	if _, err := b.admit(tcpAddr("10.9.9.9:1"), now); !errors.Is(err, errTooManyPending) {
		t.Fatalf("handshake over the global cap: %v", err)
	}
}

// TestAdmissionTableBounded: a spoofing or many-address source cannot grow the table
// without bound; idle entries make room, and when none is idle new sources share one budget.
func TestAdmissionTableBounded(t *testing.T) {
	a := newAdmission()
	now := time.Unix(100, 0)
	for i := range maxSources + 100 {
		release, err := a.admit(tcpAddr(fmt.Sprintf("10.%d.%d.%d:1", i/62500, i/250%250, i%250+1)), now)
		if err != nil && !errors.Is(err, errRateLimited) {
			t.Fatalf("source %d: %v", i, err)
		}
		if release != nil {
			release()
		}
	}
	if n := len(a.sources); n > maxSources {
		t.Fatalf("%d sources tracked, max %d", n, maxSources)
	}
	// Later, idle entries are swept out for new sources.
	now = now.Add(time.Hour)
	if _, err := a.admit(tcpAddr("172.16.0.1:1"), now); err != nil {
		t.Fatal(err)
	}
	if len(a.sources) > 1 {
		t.Fatalf("idle sources not swept: %d", len(a.sources))
	}
}

// TestFloodDoesNotLockOutPeer: while 100 dialers hammer a router from one address, a real
// peer from another address joins at once. With one global accept bucket, each accept beyond
// the burst waited 50 ms in the accept loop, and the peer queued behind the flood.
func TestFloodDoesNotLockOutPeer(t *testing.T) {
	mn := NewMemNetwork()
	victim := startRouters(t, []Config{testConfig(mn, 0)})[0]
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var dials atomic.Int64
	flood := mn.Transport("10.0.9.9")
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if nc, err := flood.Dial(ctx, hostOf(0)); err == nil {
					dials.Add(1)
					nc.Close()
				}
			}
		}()
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	testutil.Eventually(t, 5*time.Second, "flood under way", func() error {
		if n := dials.Load(); n < 100 {
			return fmt.Errorf("%d connects", n)
		}
		return nil
	})
	c := testConfig(mn, 1)
	c.Peers = []string{hostOf(0)}
	start := time.Now()
	before := dials.Load()
	peer := startRouters(t, []Config{c})[0]
	testutil.Eventually(t, 3*time.Second, "peer joined during the flood", func() error {
		return converged([]*Router{victim, peer})
	})
	during := dials.Load() - before
	if during == 0 {
		t.Fatal("the flood was not running while the peer joined")
	}
	if victim.counters.RateLimited.Load() == 0 {
		t.Fatal("flood not counted as rate limited")
	}
	t.Logf("joined in %v while the flood made %d connects", time.Since(start).Round(time.Millisecond), during)
}
