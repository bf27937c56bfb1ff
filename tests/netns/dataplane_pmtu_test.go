package netns

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/netlab"
	"github.com/weavemesh/weave/internal/testutil"
)

// pmtuStallBound is the longest the stream may stand still when the path MTU drops under it.
// Measured: the sleeve checks the MTU in use at the next heartbeat (1 s) while data flows,
// the search ends about a second later, and TCP resumes at its next retransmission: ~3.1 s.
// Without the check it waited for the 15 s periodic re-probe: ~13 s. The bound leaves margin
// for a loaded machine and still fails on a stall that waits for the periodic re-probe.
const pmtuStallBound = 8 * time.Second

// TestDataPlanePMTUDropMidFlow: a TCP stream runs between containers on two hosts over the
// sleeve; midway the far end's underlay MTU drops to 1280 (nothing tells the sender: the
// bridge drops larger frames silently). The stream completes with every byte intact and no
// stall longer than pmtuStallBound, the connection's reported MTU drops to 1280 less the
// sleeve's overhead, and pings
// are never duplicated (plaintext and with a password). Then the MTU goes back to 1500: the
// stream keeps flowing at the lower MTU, and the sleeve's periodic re-probe (at most 15 s
// later) raises the connection's MTU again, with the stream still flowing.
func TestDataPlanePMTUDropMidFlow(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"plaintext", []string{"--no-fastdp"}},
		{"password", []string{"--no-fastdp", "--password", "pmtu-secret"}},
	} {
		t.Run(tc.name, func(t *testing.T) { testPMTUDropMidFlow(t, tc.args...) })
	}
}

func testPMTUDropMidFlow(t *testing.T, args ...string) {
	lab := netlab.New(t, netlab.Options{Hosts: 2})
	nodes := launchDataPlane(t, lab, map[int][]int{1: {0}}, args...)
	waitEstablished(t, nodes[0], 1)
	waitEstablished(t, nodes[1], 1)
	pingOK(t, nodes[0], nodes[1].addr, 56)
	// The sleeve's overhead: 62 bytes in plaintext, more with a cipher's nonce and tag.
	overhead := 1500 - connMTU(t, nodes[0])
	if overhead < 62 || overhead > 100 {
		t.Fatalf("connection mtu %d before the drop: overhead %d", 1500-overhead, overhead)
	}

	st := startStream(t, nodes[0], nodes[1])
	st.waitBytes(t, 20<<20, 30*time.Second)

	dropAt := time.Now()
	if err := lab.SetMTU(lab.Hosts[1], 1280); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, "the sleeve's mtu follows the path down", func() error {
		if m := connMTU(t, nodes[0]); m != 1280-overhead {
			return fmt.Errorf("connection mtu %d, want %d", m, 1280-overhead)
		}
		return nil
	})
	t.Logf("mtu %d reported %v after the drop", 1280-overhead, time.Since(dropAt).Round(10*time.Millisecond))
	if v := metricValue(t, nodes[0].r.metrics(), "weave_sleeve_pmtu_shrunk_total"); v < 1 {
		t.Errorf("weave_sleeve_pmtu_shrunk_total = %v: the mid-flow check did not find the drop", v)
	}
	// The stream must move again after the drop, and well beyond what was in flight.
	base := st.received.Load()
	st.waitBytes(t, base+20<<20, 30*time.Second)
	t.Logf("stream resumed; longest stall so far %v", st.maxGap())
	pingNoDup(t, nodes[0], nodes[1], 10)

	if err := lab.SetMTU(lab.Hosts[1], 1500); err != nil {
		t.Fatal(err)
	}
	upAt := time.Now()
	base = st.received.Load()
	st.waitBytes(t, base+20<<20, 30*time.Second)
	pingNoDup(t, nodes[0], nodes[1], 10)
	// Nothing tells the sleeve that the path grew; the mid-flow check starts from the MTU in
	// use, so only the periodic re-probe (from the kernel's value, every 15 s) finds it.
	testutil.Eventually(t, 30*time.Second, "the sleeve's mtu follows the path back up", func() error {
		if m := connMTU(t, nodes[0]); m != 1500-overhead {
			return fmt.Errorf("connection mtu %d, want %d", m, 1500-overhead)
		}
		return nil
	})
	t.Logf("mtu %d again %v after the path grew", 1500-overhead, time.Since(upAt).Round(10*time.Millisecond))
	base = st.received.Load()
	st.waitBytes(t, base+20<<20, 30*time.Second)

	sent, got := st.finish(t)
	if sent.n != got.n || sent.sum != got.sum {
		t.Fatalf("stream damaged: sent %d bytes %x, received %d bytes %x", sent.n, sent.sum[:8], got.n, got.sum[:8])
	}
	t.Logf("%d MB intact; longest stall %v", got.n>>20, st.maxGap())
	if g := st.maxGap(); g > pmtuStallBound {
		t.Errorf("the stream stood still for %v (bound %v)", g, pmtuStallBound)
	}
}

// connMTU is the MTU n's router reports for its one connection.
func connMTU(t *testing.T, n *dpNode) int {
	t.Helper()
	for _, c := range n.r.report().Router.Connections {
		if c.State == "established" {
			return c.MTU
		}
	}
	return 0
}

// streamSum is what one end of the stream saw: a byte count and a hash of the bytes.
type streamSum struct {
	n   int64
	sum [32]byte
}

// stream is one TCP connection from a's container to b's, a writer sending a deterministic
// pattern until stopped and a reader hashing what arrives and timing the gaps between reads.
type stream struct {
	received atomic.Int64
	gapNanos atomic.Int64 // the longest time between two reads that brought data
	stop     chan struct{}
	sent     chan result
	got      chan result
	once     sync.Once
}

type result struct {
	s   streamSum
	err error
}

func startStream(t *testing.T, a, b *dpNode) *stream {
	t.Helper()
	ln, err := b.c.Listen("tcp", netip.AddrPortFrom(b.addr, 5201).String())
	if err != nil {
		t.Fatal(err)
	}
	st := &stream{stop: make(chan struct{}), sent: make(chan result, 1), got: make(chan result, 1)}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		ln.Close()
		if err != nil {
			st.got <- result{err: err}
			return
		}
		accepted <- c
		st.got <- st.read(c)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var c net.Conn
	testutil.Eventually(t, 20*time.Second, "dial the stream's receiver", func() error {
		c, err = a.c.DialContext(ctx, "tcp", netip.AddrPortFrom(b.addr, 5201).String())
		return err
	})
	go func() { st.sent <- st.write(c) }()
	t.Cleanup(func() {
		st.halt()
		c.Close()
		ln.Close()
		select {
		case rc := <-accepted:
			rc.Close()
		default:
		}
	})
	return st
}

func (st *stream) halt() { st.once.Do(func() { close(st.stop) }) }

// write sends a counter pattern (8-byte big-endian block numbers) until stopped.
func (st *stream) write(c net.Conn) result {
	defer c.(*net.TCPConn).CloseWrite()
	h := sha256.New()
	buf := make([]byte, 64<<10)
	var n int64
	for block := uint64(0); ; {
		select {
		case <-st.stop:
			var r result
			r.s.n = n
			copy(r.s.sum[:], h.Sum(nil))
			return r
		default:
		}
		for i := 0; i < len(buf); i += 8 {
			binary.BigEndian.PutUint64(buf[i:], block)
			block++
		}
		c.SetWriteDeadline(time.Now().Add(60 * time.Second))
		w, err := c.Write(buf)
		h.Write(buf[:w])
		n += int64(w)
		if err != nil {
			return result{err: fmt.Errorf("write after %d bytes: %w", n, err)}
		}
	}
}

// read hashes what arrives until EOF and records the longest gap between data.
func (st *stream) read(c net.Conn) result {
	h := sha256.New()
	buf := make([]byte, 64<<10)
	last := time.Now()
	var n int64
	for {
		c.SetReadDeadline(time.Now().Add(60 * time.Second))
		r, err := c.Read(buf)
		if r > 0 {
			now := time.Now()
			if g := now.Sub(last); int64(g) > st.gapNanos.Load() {
				st.gapNanos.Store(int64(g))
			}
			last = now
			h.Write(buf[:r])
			n += int64(r)
			st.received.Store(n)
		}
		if errors.Is(err, io.EOF) {
			var res result
			res.s.n = n
			copy(res.s.sum[:], h.Sum(nil))
			return res
		}
		if err != nil {
			return result{err: fmt.Errorf("read after %d bytes: %w", n, err)}
		}
	}
}

func (st *stream) maxGap() time.Duration { return time.Duration(st.gapNanos.Load()) }

// waitBytes waits until the receiver has at least n bytes.
func (st *stream) waitBytes(t *testing.T, n int64, within time.Duration) {
	t.Helper()
	testutil.Eventually(t, within, fmt.Sprintf("the stream delivers %d MB", n>>20), func() error {
		if got := st.received.Load(); got < n {
			return fmt.Errorf("%d bytes so far (longest stall %v)", got, st.maxGap())
		}
		return nil
	})
}

// finish stops the writer and returns what both ends saw.
func (st *stream) finish(t *testing.T) (sent, got streamSum) {
	t.Helper()
	st.halt()
	for _, ch := range []chan result{st.sent, st.got} {
		select {
		case r := <-ch:
			if r.err != nil {
				t.Fatal(r.err)
			}
			if ch == st.sent {
				sent = r.s
			} else {
				got = r.s
			}
		case <-time.After(90 * time.Second):
			t.Fatal("the stream did not finish")
		}
	}
	return sent, got
}
