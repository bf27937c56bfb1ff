package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/weavemesh/weave/api"
	"github.com/weavemesh/weave/internal/testutil"
)

// Three daemons with a password: the mesh forms (nodes 1 and 2 find each other through
// gossip), every pair is established on the encrypted sleeve, broadcast and unicast
// frames cross between the TAPs, and IPAM hands out unique addresses from one ring that
// every peer sees the same.
func TestDaemonsFormMeshCarryFramesAndAgreeOnIPAM(t *testing.T) {
	c := newCluster(t, opts{n: 3, password: "e2e secret", noFastDP: true})
	n0, n1, n2 := c.nodes[0], c.nodes[1], c.nodes[2]
	for _, a := range c.nodes {
		for _, b := range c.nodes {
			if a != b {
				waitOverlay(t, a, b, "sleeve")
				if conn, _ := a.connection(t, b); !conn.Encrypted {
					t.Errorf("node %d -> %d: not encrypted with a password: %+v", a.i, b.i, conn)
				}
			}
		}
	}

	// A broadcast from a container on node 0 reaches both others; node 2's unicast answer
	// reaches node 0 and not node 1 (node 1's next frame from node 2 comes after it on
	// the same ordered path, so it would have arrived first).
	sendUntil(t, n0, n1, frame(bcast, mac(0, 1), "hello-all"), "hello-all")
	sendUntil(t, n0, n2, frame(bcast, mac(0, 1), "hello-all"), "hello-all")
	sendUntil(t, n2, n0, frame(mac(0, 1), mac(2, 1), "reply-to-0"), "reply-to-0")
	before := sendUntil(t, n2, n1, frame(bcast, mac(2, 1), "after-reply"), "after-reply")
	if k := holding(before, "reply-to-0"); k != 0 {
		t.Errorf("node 1 got %d copies of a unicast frame for node 0", k)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rng := netip.MustParsePrefix(api.DefaultIPRange)
	seen := map[string]int{}
	for _, n := range c.nodes {
		for k := range 3 {
			resp, err := n.c.IPAMAllocate(ctx, api.IPAMRequest{ID: fmt.Sprintf("c%d-%d", n.i, k), Iface: "ethwe"})
			if err != nil {
				t.Fatalf("node %d: allocate: %v", n.i, err)
			}
			if len(resp.CIDRs) != 1 {
				t.Fatalf("node %d: allocate returned %v", n.i, resp.CIDRs)
			}
			p := netip.MustParsePrefix(resp.CIDRs[0])
			if !rng.Contains(p.Addr()) {
				t.Errorf("node %d: %v outside %v", n.i, p, rng)
			}
			if j, dup := seen[p.Addr().String()]; dup {
				t.Errorf("%v handed out by node %d and node %d", p.Addr(), j, n.i)
			}
			seen[p.Addr().String()] = n.i
		}
	}
	testutil.Eventually(t, 10*time.Second, "one ring on every peer", func() error {
		ring := func(n *node) ([]string, error) {
			ip := n.report(t).IPAM
			if ip == nil || ip.Status != "ready" {
				return nil, fmt.Errorf("node %d: ipam %+v", n.i, ip)
			}
			var r []string
			for _, e := range ip.Entries {
				r = append(r, fmt.Sprintf("%s/%d@%s", e.Token, e.Size, e.Peer))
			}
			return r, nil
		}
		want, err := ring(n0)
		if err != nil {
			return err
		}
		owners := map[string]bool{}
		for _, e := range n0.report(t).IPAM.Entries {
			owners[e.Peer] = true
		}
		if len(owners) != 3 {
			return fmt.Errorf("ring has %d owners, want 3 (each allocated): %v", len(owners), want)
		}
		for _, n := range c.nodes[1:] {
			got, err := ring(n)
			if err != nil {
				return err
			}
			if !slices.Equal(got, want) {
				return fmt.Errorf("node %d sees ring %v, node 0 %v", n.i, got, want)
			}
		}
		return nil
	})
}

// Two daemons on fake kernels: while the kernel path is blocked the pair runs on the
// sleeve and frames cross there; once VXLAN heartbeats pass the pair flips to fastdp, the
// kernel is programmed with the learned MAC and the router leaves unicast to the kernel;
// when the kernel path breaks again the pair falls back to sleeve and frames cross there.
func TestDaemonPairFlipsBetweenSleeveAndFastDP(t *testing.T) {
	c := newCluster(t, opts{n: 2})
	n0, n1 := c.nodes[0], c.nodes[1]
	h0, h1 := netip.MustParseAddr(n0.host), netip.MustParseAddr(n1.host)
	blockKernel := func(on bool) {
		c.kernel.Block(h0, h1, on)
		c.kernel.Block(h1, h0, on)
	}
	blockKernel(true)
	waitOverlay(t, n0, n1, "sleeve")
	waitOverlay(t, n1, n0, "sleeve")
	if conn, _ := n0.connection(t, n1); conn.Info == "" {
		t.Errorf("a pair held on sleeve gives no reason: %+v", conn)
	}
	// Frames cross on the sleeve; both routers learn the other's container.
	sendUntil(t, n0, n1, frame(bcast, mac(0, 1), "learn-0"), "learn-0")
	sendUntil(t, n1, n0, frame(mac(0, 1), mac(1, 1), "learn-1"), "learn-1")

	blockKernel(false)
	waitOverlay(t, n0, n1, "fastdp")
	waitOverlay(t, n1, n0, "fastdp")
	testutil.Eventually(t, 5*time.Second, "node 0's kernel FDB has node 1's container", func() error {
		if a, ok := n0.kernel.MAC(mac(1, 1)); !ok || a != h1 {
			return fmt.Errorf("entry %v %v", a, ok)
		}
		return nil
	})
	// The kernel carries this one (the fake kernel carries no data: it is lost).
	n0.send(t, frame(mac(1, 1), mac(0, 1), "via-kernel"))

	blockKernel(true)
	waitOverlay(t, n0, n1, "sleeve")
	waitOverlay(t, n1, n0, "sleeve")
	before := sendUntil(t, n0, n1, frame(mac(1, 1), mac(0, 1), "via-sleeve"), "via-sleeve")
	if k := holding(before, "via-kernel"); k != 0 {
		t.Errorf("a frame the kernel path carried also crossed the sleeve (%d copies)", k)
	}
	if conn, _ := n0.connection(t, n1); conn.Info == "" {
		t.Errorf("a pair back on sleeve gives no reason: %+v", conn)
	}
}
