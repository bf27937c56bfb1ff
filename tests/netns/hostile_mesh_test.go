package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/netlab"
	"github.com/weavemesh/weave/internal/testutil"
	"github.com/weavemesh/weave/mesh"
)

// claimName connects from host h to addr and completes the real handshake claiming name,
// with a start time older than any real router's, then reads until the router closes the
// connection. It returns the reason the router gave, if it sent one.
func claimName(t *testing.T, h *netlab.Host, addr string, name mesh.PeerName) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := h.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("impostor dial %s: %v", addr, err)
	}
	conn, err := mesh.RawPeer{
		Name: name, NickName: "impostor", UID: uint64(time.Now().UnixNano()) | 1,
		Features: map[string]string{"started": "1"}, Timeout: 5 * time.Second,
	}.Handshake(nc)
	if err != nil {
		t.Fatalf("impostor handshake with %s: %v", addr, err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var reason string
	for {
		msg, err := conn.Receive()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("%s kept the impostor's connection claiming %s", addr, name)
			}
			return reason
		}
		// A refusal: tag, length, text (mesh/PROTOCOL.md).
		if len(msg) > 2 && msg[0] == 14 {
			reason = string(msg[2:])
		}
	}
}

// meshRefused returns weave_mesh_refused_total{reason=...} of r.
func meshRefused(t *testing.T, r *router, reason string) float64 {
	return metricValue(t, r.metrics(), `weave_mesh_refused_total{reason="`+reason+`"}`)
}

// alive fails the test unless r's weaver is still the process it was.
func alive(t *testing.T, r *router, pid int) {
	t.Helper()
	if p := r.pid(); p != pid || syscall.Kill(pid, 0) != nil {
		t.Fatalf("weaver in %s (pid %d) is gone (now %d)\n%s", r.host.Name, pid, p, r.logTail())
	}
}

// established reports whether r has an established connection to peer.
func established(r *router, peer string) error {
	for _, c := range r.report().Router.Connections {
		if c.Peer == peer && c.State == "established" {
			return nil
		}
	}
	return fmt.Errorf("%s has no established connection to %s", r.host.Name, peer)
}

// TestHostileMeshNameClaim: in a plaintext mesh, an impostor on a third host completes the
// handshake claiming the name of a running peer with a made-up older start time, twice:
// once to its neighbour, once to the peer itself. Before, either made the legitimate peer
// exit ("name collision ... this peer is newer and refuses to run"). Now both routers keep
// running with their connection, each claim is refused as "name in use", counted in
// weave_mesh_refused_total{reason="name_in_use"} and logged.
func TestHostileMeshNameClaim(t *testing.T) {
	lab := netlab.New(t, netlab.Options{Hosts: 3})
	rs := launchAll(t, lab, 2, map[int][]int{1: {0}})
	for _, r := range rs {
		testutil.Eventually(t, 30*time.Second, r.host.Name+" connected", func() error {
			return established(r, rs[1-slices.Index(rs, r)].name)
		})
	}
	pids := []int{rs[0].pid(), rs[1].pid()}
	victim, err := mesh.ParsePeerName(rs[1].name)
	if err != nil {
		t.Fatal(err)
	}
	impostor := lab.Hosts[2]
	for i, target := range []*router{rs[0], rs[1]} {
		addr := net.JoinHostPort(target.host.PublicAddr.String(), "6783")
		reason := claimName(t, impostor, addr, victim)
		if !strings.Contains(reason, "name in use") {
			t.Fatalf("claim %d to %s: refusal %q, want name in use", i+1, target.host.Name, reason)
		}
		testutil.Eventually(t, 10*time.Second, "claim counted", func() error {
			if n := meshRefused(t, target, "name_in_use"); n < 1 {
				return fmt.Errorf("%s: name_in_use %v", target.host.Name, n)
			}
			return nil
		})
	}
	for i, r := range rs {
		alive(t, r, pids[i])
		if err := established(r, rs[1-i].name); err != nil {
			t.Fatal(err)
		}
		log, err := os.ReadFile(filepath.Join(r.stateDir, "weaver.log"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(log), "name in use") {
			t.Fatalf("%s's log does not say name in use\n%s", r.host.Name, r.logTail())
		}
		if strings.Contains(string(log), "refuses to run") {
			t.Fatalf("%s was told to stop\n%s", r.host.Name, r.logTail())
		}
	}
}

// TestHostileMeshFlood: one host floods a router's control port with TCP connects (2000
// before the join starts, and on until it is done) while a third host's router launches: it
// joins within 10 s. Before, the flood emptied the single accept bucket and the accept loop
// slept 50 ms per connection, so the real peer waited behind it (113 s measured). The
// refusals are counted as rate limited, and their log lines are limited.
func TestHostileMeshFlood(t *testing.T) {
	lab := netlab.New(t, netlab.Options{Hosts: 3})
	victim := launchAll(t, lab, 1, nil)[0]
	flooder, joiner := lab.Hosts[1], lab.Hosts[2]
	addr := net.JoinHostPort(victim.host.PublicAddr.String(), "6783")

	// Enough ephemeral ports for the flood's TIME_WAITs.
	if out, err := flooder.Run(context.Background(), "sysctl", "-w", "net.ipv4.ip_local_port_range=1024 65000"); err != nil {
		t.Fatalf("sysctl: %v\n%s", err, out)
	}
	const before, limit = 2000, 40000
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	var connects atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && connects.Load() < limit {
				dctx, dcancel := context.WithTimeout(ctx, time.Second)
				nc, err := flooder.DialContext(dctx, "tcp", addr)
				dcancel()
				if err == nil {
					nc.Close()
				}
				// The first connects as fast as possible, then paced, so that the flood
				// still runs while the peer joins without exhausting ports.
				if err != nil || connects.Add(1) > before {
					select {
					case <-ctx.Done():
					case <-time.After(5 * time.Millisecond):
					}
				}
			}
		}()
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	testutil.Eventually(t, 30*time.Second, strconv.Itoa(before)+" connects", func() error {
		if n := connects.Load(); n < before {
			return fmt.Errorf("%d connects", n)
		}
		return nil
	})

	start := time.Now()
	r := newRouter(t, joiner)
	dumpOnFailure(t, victim, r)
	r.launch(victim.host.PublicAddr.String())
	names := []string{victim.name, r.name}
	testutil.Eventually(t, 10*time.Second-time.Since(start), "joined during the flood", func() error {
		return knowsAll(r, names)
	})
	joined := time.Since(start)
	atJoin := connects.Load()
	if ctx.Err() != nil || atJoin >= limit {
		t.Fatalf("the flood was over (%d connects) before the peer joined", atJoin)
	}
	cancel()
	wg.Wait()
	t.Logf("joined in %v while %s made %d connects", joined.Round(time.Millisecond), flooder.Name, atJoin)

	limited := meshRefused(t, victim, "rate_limited") + meshRefused(t, victim, "too_many_handshakes")
	if limited < 100 {
		t.Fatalf("only %v refusals counted as rate limited after %d connects", limited, atJoin)
	}
	// Logs: a few lines per reason and interval, not one per refusal.
	log, err := os.ReadFile(filepath.Join(victim.stateDir, "weaver.log"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(log), "connection refused"); n == 0 || float64(n) > limited/10 {
		t.Fatalf("%d 'connection refused' log lines for %v refusals", n, limited)
	}
}
