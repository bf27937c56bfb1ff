package sleeve_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/testutil"
	"github.com/weavemesh/weave/mesh"
	"github.com/weavemesh/weave/overlay"
	"github.com/weavemesh/weave/sleeve"
)

func TestTwoNodesExchangeFrames(t *testing.T) {
	for _, tc := range []struct {
		name, password string
		ciphers        [][]string
		trusted        []netip.Prefix
		want           string
	}{
		// Both ends inside each other's trusted subnets: the data path skips encryption.
		{name: "trusted", password: "secret", trusted: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, want: "none"},
		{name: "plaintext", want: "none"},
		{name: "aes-gcm", password: "secret", want: sleeve.CipherAESGCM},
		{name: "secretbox", password: "secret", ciphers: [][]string{{sleeve.CipherSecretbox}, nil}, want: sleeve.CipherSecretbox},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLab(t, labOpts{n: 2, links: [][2]int{{1, 0}}, password: tc.password, ciphers: tc.ciphers, trusted: tc.trusted})
			l.waitRoutes()
			a, b := l.nodes[0], l.nodes[1]
			for _, n := range l.nodes {
				other := l.nodes[1-n.i]
				info, ok := n.s.PeerInfo(other.m.Name())
				if !ok || !info.Established || info.Cipher != tc.want {
					t.Fatalf("node %d peer info %+v, want established with %s", n.i, info, tc.want)
				}
				overhead := sleeve.OverheadPlain
				if tc.want != "none" {
					overhead = sleeve.OverheadSealed
				}
				if want := 1500 - overhead - 14; info.MTU != want {
					t.Errorf("node %d: mtu %d, want %d", n.i, info.MTU, want)
				}
			}
			// Broadcast from a container on a, answer by unicast from b, then unicast back.
			a.tap.Inject(ethFrame(bcast, mac(0, 1), "hello-broadcast", 60))
			expectFrame(t, b, "hello-broadcast", 5*time.Second)
			full := 1500 - sleeve.OverheadPlain
			if tc.want != "none" {
				full = 1500 - sleeve.OverheadSealed
			}
			b.tap.Inject(ethFrame(mac(0, 1), mac(1, 1), "hello-unicast", full))
			got := expectFrame(t, a, "hello-unicast", 5*time.Second)
			if len(got) != full {
				t.Errorf("unicast frame arrived with %d bytes, want %d", len(got), full)
			}
			if owner, ok := a.r.Owner(macSlice(1, 1)); !ok || owner != b.m.Name() {
				t.Errorf("a learned %v %v for b's MAC", owner, ok)
			}
			a.tap.Inject(ethFrame(mac(1, 1), mac(0, 1), "back-unicast", 100))
			expectFrame(t, b, "back-unicast", 5*time.Second)
			// Many frames in a burst all cross, in order.
			for k := range 300 {
				a.tap.Inject(ethFrame(mac(1, 1), mac(0, 1), fmt.Sprintf("burst-%04d", k), 1000))
			}
			for k := range 300 {
				expectFrame(t, b, fmt.Sprintf("burst-%04d", k), 5*time.Second)
			}
			if st := a.s.Stats(); st.FramesOut < 302 || st.BytesOut == 0 {
				t.Errorf("sender stats %+v", st)
			}
			if st := b.s.Stats(); st.FramesIn < 302 || st.AuthFailed != 0 || st.Replayed != 0 {
				t.Errorf("receiver stats %+v", st)
			}
		})
	}
}

// TestRelayThroughMiddle: 0 - 1 - 2 in a line (0 and 2 cannot reach each other at all):
// frames between 0 and 2 are relayed by 1 without being injected into 1's bridge.
func TestRelayThroughMiddle(t *testing.T) {
	l := newLab(t, labOpts{n: 3, links: [][2]int{{0, 1}, {2, 1}}, password: "pw"})
	l.under.Block(addrPort(0), addrPort(2))
	l.under.Block(addrPort(2), addrPort(0))
	l.waitRoutes()
	n0, n1, n2 := l.nodes[0], l.nodes[1], l.nodes[2]
	if hop, _ := n0.m.UnicastNextHop(n2.m.Name()); hop != n1.m.Name() {
		t.Fatalf("route 0 -> 2 goes via %v, want node 1", hop)
	}
	n0.tap.Inject(ethFrame(bcast, mac(0, 1), "who-has", 60))
	expectFrame(t, n2, "who-has", 5*time.Second)
	expectFrame(t, n1, "who-has", 5*time.Second)
	n2.tap.Inject(ethFrame(mac(0, 1), mac(2, 1), "reply-from-2", 200))
	expectFrame(t, n0, "reply-from-2", 5*time.Second)
	n0.tap.Inject(ethFrame(mac(2, 1), mac(0, 1), "unicast-to-2", 1428))
	expectFrame(t, n2, "unicast-to-2", 5*time.Second)
	// The middle saw only the broadcast: a fence broadcast from 2 arrives after anything
	// the unicasts could have left on 1's bridge.
	n2.tap.Inject(ethFrame(bcast, mac(2, 1), "fence", 60))
	if c := countFrames(t, n1, "unicast", "fence", 5*time.Second); c != 0 {
		t.Errorf("middle node injected %d relayed unicast frames", c)
	}
	if st := n1.r.Stats(); st.Relayed < 2 {
		t.Errorf("middle node relayed %d frames, want >= 2", st.Relayed)
	}
}

// TestBroadcastOncePerPeer: in a full mesh of four, a broadcast reaches every other peer
// exactly once.
func TestBroadcastOncePerPeer(t *testing.T) {
	var links [][2]int
	for i := range 4 {
		for j := range i {
			links = append(links, [2]int{i, j})
		}
	}
	l := newLab(t, labOpts{n: 4, links: links})
	full := map[mesh.PeerName]int{}
	for i := range 4 {
		full[peerName(i)] = 3
	}
	l.waitSettled(full)
	// The routers take the settled routes within their poll interval.
	testutil.Eventually(t, 5*time.Second, "trees in the routers", func() error {
		for _, n := range l.nodes[1:] {
			if hops := n.r.BroadcastHops(peerName(0)); len(hops) != 0 {
				return fmt.Errorf("node %d passes 0's broadcasts on to %v", n.i, hops)
			}
		}
		if hops := l.nodes[0].r.BroadcastHops(peerName(0)); len(hops) != 3 {
			return fmt.Errorf("node 0 floods to %v", hops)
		}
		return nil
	})
	const frames = 20
	for k := range frames {
		l.nodes[0].tap.Inject(ethFrame(bcast, mac(0, 1), fmt.Sprintf("flood-%02d", k), 60))
	}
	l.nodes[0].tap.Inject(ethFrame(bcast, mac(0, 1), "end-of-flood", 60))
	for _, n := range l.nodes[1:] {
		if c := countFrames(t, n, "flood-", "end-of-flood", 5*time.Second); c != frames {
			t.Errorf("node %d got %d broadcast frames, want %d", n.i, c, frames)
		}
	}
	// Unknown unicast floods the same way.
	l.nodes[1].tap.Inject(ethFrame(mac(9, 9), mac(1, 1), "unknown-unicast", 60))
	l.nodes[1].tap.Inject(ethFrame(bcast, mac(1, 1), "end-2", 60))
	for _, n := range []*node{l.nodes[0], l.nodes[2], l.nodes[3]} {
		if c := countFrames(t, n, "unknown-unicast", "end-2", 5*time.Second); c != 1 {
			t.Errorf("node %d got %d copies of the unknown unicast", n.i, c)
		}
	}
}

// TestNoCommonCipherNoDataPath: with a password and no cipher in common, the connection never
// carries data: never a fallback to plaintext.
func TestNoCommonCipherNoDataPath(t *testing.T) {
	l := newLab(t, labOpts{n: 2, links: [][2]int{{1, 0}}, password: "pw",
		ciphers: [][]string{{sleeve.CipherAESGCM}, {sleeve.CipherSecretbox}}})
	a, b := l.nodes[0], l.nodes[1]
	testutil.Eventually(t, 5*time.Second, "mesh connection up", func() error {
		for _, c := range a.m.Status().Connections {
			if c.Peer == b.m.Name() {
				return nil
			}
		}
		return fmt.Errorf("no connection yet")
	})
	deadline := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(deadline) {
		if info, _ := a.s.PeerInfo(b.m.Name()); info.Established {
			t.Fatalf("established without a common cipher: %+v", info)
		}
		a.s.Forward(b.m.Name(), []overlay.Frame{{Src: a.m.Name(), Dst: b.m.Name(), Data: ethFrame(bcast, mac(0, 1), "leak", 60)}})
		time.Sleep(20 * time.Millisecond) // sampling a condition that must stay false
	}
	if st := b.s.Stats(); st.FramesIn != 0 || st.Datagrams != 0 {
		t.Fatalf("b received something: %+v", st)
	}
	// Status says why, on both sides.
	for _, n := range []*node{a, b} {
		other := b
		if n == b {
			other = a
		}
		testutil.Eventually(t, 5*time.Second, "the reason in PeerInfo", func() error {
			if info, _ := n.s.PeerInfo(other.m.Name()); !strings.Contains(info.Waiting, "no common cipher") {
				return fmt.Errorf("node %d: waiting %q", n.i, info.Waiting)
			}
			return nil
		})
	}
}
