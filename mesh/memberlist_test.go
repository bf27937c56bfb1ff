package mesh

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/testutil"
)

func fastMemberlist(c *Config) {
	c.NoMemberlist = false
	c.MemberlistTiming = &MemberlistTiming{
		ProbeInterval:  100 * time.Millisecond,
		ProbeTimeout:   50 * time.Millisecond,
		GossipInterval: 50 * time.Millisecond,
		PushPull:       500 * time.Millisecond,
		SuspicionMult:  2,
		JoinInterval:   200 * time.Millisecond,
	}
}

func livenessOf(r *Router, p PeerName) (string, bool) {
	for _, m := range r.Liveness() {
		if m.Peer == p {
			return m.State, true
		}
	}
	return "", false
}

func allSee(rs []*Router, subjects []*Router, want string) error {
	for _, r := range rs {
		for _, s := range subjects {
			if s == r {
				continue
			}
			if st, ok := livenessOf(r, s.Name()); !ok || st != want {
				return fmt.Errorf("%s sees %s as %v (known %v), want %v", r.Name(), s.Name(), st, ok, want)
			}
		}
	}
	return nil
}

func TestMemberlistMapping(t *testing.T) {
	p := PeerName(0x0a0b0c0d0e0f)
	got, err := peerFromMemberlistAddr(memberlistAddr(p).String())
	if err != nil || got != p {
		t.Fatalf("round trip: %s %v", got, err)
	}
	for _, bad := range []string{"10.0.0.1:6783", "nonsense", "[fd00::1]:1"} {
		if _, err := peerFromMemberlistAddr(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestMemberlistOverMesh: memberlist runs over the mesh only (a NATed peer nobody can dial
// included), agrees on who is alive, declares a stopped peer dead everywhere, and re-merges
// by itself after a partition heals.
func TestMemberlistOverMesh(t *testing.T) {
	mn := NewMemNetwork()
	// A line: 0 - 1 - 2 - 3, where 3 is "NATed" (only dials out) and 0 is never dialled
	// directly by 2 or 3.
	cfgs := make([]Config, 4)
	for i := range cfgs {
		cfgs[i] = testConfig(mn, i)
		cfgs[i].NoDiscovery = true
		fastMemberlist(&cfgs[i])
		if i > 0 {
			cfgs[i].Peers = []string{hostOf(i - 1)}
		}
	}
	rs := startRouters(t, cfgs)
	var mu sync.Mutex
	events := map[PeerName][]string{}
	rs[0].OnLivenessChange(func(m MemberStatus) {
		mu.Lock()
		events[m.Peer] = append(events[m.Peer], m.State)
		mu.Unlock()
	})
	testutil.Eventually(t, 10*time.Second, "all alive everywhere", func() error { return allSee(rs, rs, MemberAlive) })

	// Partition {0,1} | {2,3}, then heal it.
	mn.Block("10.0.0.2", "10.0.0.3", true)
	testutil.Eventually(t, 10*time.Second, "other side dead after partition", func() error {
		if err := allSee(rs[:2], rs[2:], MemberDead); err != nil {
			return err
		}
		return allSee(rs[2:], rs[:2], MemberDead)
	})
	mn.Block("10.0.0.2", "10.0.0.3", false)
	testutil.Eventually(t, 15*time.Second, "re-merged after the partition healed", func() error { return allSee(rs, rs, MemberAlive) })

	// A stopped peer is declared dead by everyone (it was relayed-only for 0).
	rs[3].Close()
	testutil.Eventually(t, 10*time.Second, "stopped peer dead everywhere", func() error { return allSee(rs[:3], rs[3:], MemberDead) })
	mu.Lock()
	defer mu.Unlock()
	ev := events[rs[3].Name()]
	if len(ev) == 0 || ev[len(ev)-1] != MemberDead {
		t.Fatalf("liveness callbacks for the stopped peer: %v", ev)
	}
	st := rs[0].Status()
	found := false
	for _, m := range st.Liveness {
		if m.Peer == rs[3].Name() && m.State == MemberDead && !m.Since.IsZero() {
			found = true
		}
	}
	if !found {
		t.Fatalf("status liveness: %+v", st.Liveness)
	}
}

func TestMeshStreamOrderAndClose(t *testing.T) {
	mn := NewMemNetwork()
	c0, c1 := testConfig(mn, 0), testConfig(mn, 1)
	fastMemberlist(&c0)
	fastMemberlist(&c1)
	c1.Peers = []string{hostOf(0)}
	rs := startRouters(t, []Config{c0, c1})
	testutil.Eventually(t, 5*time.Second, "connected", func() error { return converged(rs) })
	// Use a second transport pair on a private channel so memberlist's own traffic does
	// not interfere.
	ta, tb := newMeshTransport(rs[0]), newMeshTransport(rs[1])
	ga, err := rs[0].NewGossip("test.stream", ta)
	if err != nil {
		t.Fatal(err)
	}
	gb, _ := rs[1].NewGossip("test.stream", tb)
	ta.gossip, tb.gossip = ga, gb
	conn, err := ta.DialTimeout(memberlistAddr(rs[1].Name()).String(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, 200<<10)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	if n, err := conn.Write(payload); err != nil || n != len(payload) {
		t.Fatalf("write %d %v", n, err)
	}
	conn.Close()
	var acc []byte
	select {
	case s := <-tb.StreamCh():
		buf := make([]byte, 7000)
		s.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			n, err := s.Read(buf)
			acc = append(acc, buf[:n]...)
			if err != nil {
				break
			}
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no stream accepted")
	}
	if string(acc) != string(payload) {
		t.Fatalf("got %d bytes, want %d identical", len(acc), len(payload))
	}
	// A read deadline unblocks a reader.
	c2, _ := ta.DialTimeout(memberlistAddr(rs[1].Name()).String(), time.Second)
	c2.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := c2.Read(make([]byte, 1)); err == nil {
		t.Fatal("read past its deadline")
	} else if ne, ok := err.(interface{ Timeout() bool }); !ok || !ne.Timeout() {
		t.Fatalf("deadline error %v is not a timeout", err)
	}
	// Out-of-order data resets the stream.
	ms := c2.(*meshStream)
	if err := ms.deliver(5, []byte("x")); err == nil || errors.Is(err, errStreamClosed) {
		t.Fatalf("gap accepted: %v", err)
	}
}

func FuzzMemberlistMessage(f *testing.F) {
	f.Add([]byte{mlPacket, 1, 2, 3})
	f.Add([]byte{mlStreamOpen, 1, 0, 0, 0, 0, 0, 0, 0, 9})
	f.Add([]byte{mlStreamData, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 'x'})
	f.Add([]byte{mlStreamClose, 0, 0, 0, 0, 0, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		mn := NewMemNetwork()
		cfg := testConfig(mn, 0)
		cfg.ListenAddr = "-"
		r, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		tr := newMeshTransport(r)
		tr.gossip, _ = r.NewGossip("fuzz", tr)
		tr.OnGossipUnicast(2, b)
		tr.Shutdown()
	})
}
