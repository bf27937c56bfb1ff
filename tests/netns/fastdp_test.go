package netns

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weavemesh/weave/api"
	"github.com/weavemesh/weave/internal/netlab"
	"github.com/weavemesh/weave/internal/testutil"
)

// fastdpPort is the VXLAN port of routers on the default --port.
const fastdpPort = 6784

// connTo returns n's connection to the router of peer, if any.
func connTo(n, peer *dpNode) (api.Connection, bool) {
	for _, c := range n.r.report().Router.Connections {
		if c.Peer == peer.r.name {
			return c, true
		}
	}
	return api.Connection{}, false
}

// waitOverlay waits until n's connection to peer is established over overlay and its Info
// contains info.
func waitOverlay(t *testing.T, n, peer *dpNode, overlay, info string, within time.Duration) api.Connection {
	t.Helper()
	var got api.Connection
	testutil.Eventually(t, within, fmt.Sprintf("%s -> %s over %s (%q)", n.h.Name, peer.h.Name, overlay, info), func() error {
		c, ok := connTo(n, peer)
		if !ok || c.State != "established" || c.Overlay != overlay || !strings.Contains(c.Info, info) {
			return fmt.Errorf("connection %+v", c)
		}
		got = c
		return nil
	})
	return got
}

var overlayCounterRE = regexp.MustCompile(`(?m)^weave_(\w+)_(frames|bytes)_total\{direction="(in|out)"\} (\S+)$`)

// overlayCounter is an overlay's counter ("frames" or "bytes") in direction ("in", "out",
// or "" for both) from n's metrics.
func overlayCounter(t *testing.T, n *dpNode, overlay, what, direction string) uint64 {
	t.Helper()
	var sum uint64
	found := 0
	for _, v := range overlayCounterRE.FindAllStringSubmatch(n.r.metrics(), -1) {
		if v[1] != overlay || v[2] != what || (direction != "" && v[3] != direction) {
			continue
		}
		f, err := strconv.ParseFloat(v[4], 64)
		if err != nil {
			t.Fatal(err)
		}
		sum += uint64(f)
		found++
	}
	if found == 0 {
		t.Fatalf("%s: no weave_%s_%s_total in the metrics", n.h.Name, overlay, what)
	}
	return sum
}

// sleeveFrames is the sleeve's frame counter (in + out) from n's metrics.
func sleeveFrames(t *testing.T, n *dpNode) uint64 {
	t.Helper()
	return overlayCounter(t, n, "sleeve", "frames", "")
}

// pingNoDup pings to from n count times and fails on a loss or a duplicate reply.
func pingNoDup(t *testing.T, n *dpNode, to *dpNode, count int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := n.c.Run(ctx, "ping", "-c", strconv.Itoa(count), "-i", "0.1", "-W", "2", to.addr.String())
	if err != nil {
		t.Fatalf("%s -> %s: %v\n%s", n.h.Name, to.h.Name, err, out)
	}
	if strings.Contains(string(out), "DUP!") {
		t.Fatalf("%s -> %s: duplicate replies:\n%s", n.h.Name, to.h.Name, out)
	}
	if !strings.Contains(string(out), fmt.Sprintf("%d received", count)) {
		t.Fatalf("%s -> %s: lost pings:\n%s", n.h.Name, to.h.Name, out)
	}
}

// TestFastDPTwoHosts: two hosts without a password carry their containers' traffic over
// kernel VXLAN (the sleeve's counters stay flat during a TCP stream); with UDP 6784 blocked
// the pair falls back to the sleeve within seconds, saying why, and returns when unblocked.
func TestFastDPTwoHosts(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireCommands(t, "iperf3", "ping")
	lab := netlab.New(t, netlab.Options{Hosts: 2})
	nodes := launchDataPlane(t, lab, map[int][]int{1: {0}})
	a, b := nodes[0], nodes[1]
	c := waitOverlay(t, a, b, "fastdp", "", 30*time.Second)
	waitOverlay(t, b, a, "fastdp", "", 10*time.Second)
	if c.MTU <= 0 || c.MTU > 1500-50 {
		t.Errorf("fastdp connection mtu %d, want within the VXLAN MTU (%d)", c.MTU, 1500-50)
	}
	pingOK(t, a, b.addr, 56)
	pingOK(t, b, a.addr, 1200)

	before := sleeveFrames(t, a)
	kOut, kIn := overlayCounter(t, a, "fastdp", "bytes", "out"), overlayCounter(t, b, "fastdp", "bytes", "in")
	gbps := iperf(t, a, b, 2)
	after := sleeveFrames(t, a)
	kOut, kIn = overlayCounter(t, a, "fastdp", "bytes", "out")-kOut, overlayCounter(t, b, "fastdp", "bytes", "in")-kIn
	t.Logf("fastdp: iperf3 one TCP stream %.2f Gbit/s; sleeve frames during it: %d; fastdp bytes out of a %d, into b %d",
		gbps, after-before, kOut, kIn)
	if gbps <= 0 {
		t.Fatal("iperf3 moved nothing")
	}
	// A 2 s stream is hundreds of thousands of frames; a few ARPs may still use the sleeve.
	if after-before > 50 {
		t.Errorf("%d frames crossed the sleeve during the stream: fastdp did not carry it", after-before)
	}
	// fastdp's counters are the kernel's: the stream is in them (at least half of what iperf3
	// reports, which leaves room for its start and end outside the 2 s).
	if want := uint64(gbps * 1e9 / 8 * 2 / 2); kOut < want || kIn < want {
		t.Errorf("fastdp counted %d bytes out of a and %d into b during the stream, want at least %d each", kOut, kIn, want)
	}

	// Block VXLAN: ping keeps working (over the sleeve) within seconds, status says why.
	if err := lab.BlockUDPPort(a.h, b.h, fastdpPort); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	pingOK(t, a, b.addr, 56)
	c = waitOverlay(t, a, b, "sleeve", "udp-blocked", 15*time.Second)
	t.Logf("on sleeve %v after the block: %q", time.Since(start).Round(100*time.Millisecond), c.Info)
	pingOK(t, a, b.addr, 56)
	pingOK(t, b, a.addr, 56)
	if gbps := iperf(t, a, b, 1); gbps <= 0 {
		t.Fatal("iperf3 over the fallback moved nothing")
	}

	// Unblock: back to fastdp after the hold-off.
	if err := lab.UnblockUDPPort(a.h, b.h, fastdpPort); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	waitOverlay(t, a, b, "fastdp", "", 30*time.Second)
	waitOverlay(t, b, a, "fastdp", "", 10*time.Second)
	t.Logf("back on fastdp %v after the unblock", time.Since(start).Round(100*time.Millisecond))
	pingNoDup(t, a, b, 5)
}

// TestFastDPMixed: three hosts in a full mesh, and UDP 6784 blocked between the first and
// the third: that pair uses the sleeve, the others fastdp. Broadcast (ARP to a fresh
// neighbour) and unicast work between every pair, and no ping gets a duplicate reply.
func TestFastDPMixed(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireCommands(t, "ping")
	lab := netlab.New(t, netlab.Options{Hosts: 3})
	if err := lab.BlockUDPPort(lab.Hosts[0], lab.Hosts[2], fastdpPort); err != nil {
		t.Fatal(err)
	}
	nodes := launchDataPlane(t, lab, map[int][]int{1: {0}, 2: {0, 1}})
	waitOverlay(t, nodes[0], nodes[1], "fastdp", "", 30*time.Second)
	waitOverlay(t, nodes[1], nodes[2], "fastdp", "", 10*time.Second)
	waitOverlay(t, nodes[0], nodes[2], "sleeve", "udp-blocked", 15*time.Second)
	waitOverlay(t, nodes[2], nodes[0], "sleeve", "udp-blocked", 5*time.Second)
	// The first packet of each pair needs ARP: a broadcast that one overlay or the other
	// (or both, for different neighbours) carries; then 20 pings, none duplicated.
	for _, p := range [][2]int{{0, 1}, {0, 2}, {1, 2}, {2, 0}, {2, 1}, {1, 0}} {
		from, to := nodes[p[0]], nodes[p[1]]
		pingOK(t, from, to.addr, 56)
		pingNoDup(t, from, to, 20)
	}
}

// TestFastDPBroadcastPastNeighbour: 1 - 2 - 3 in a line (1 and 3 cannot talk at all), every
// link on fastdp. 1's broadcast reaches 2 through the kernel, which never shows it to 2's
// router; the router of 1 still sends it to 2 over the sleeve marked "delivered", so that 2
// passes it on to 3 without delivering it twice. Then 1 and 3 talk (relayed by 2), with no
// duplicates.
func TestFastDPBroadcastPastNeighbour(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireCommands(t, "ping")
	lab := netlab.New(t, netlab.Options{Hosts: 3})
	if err := lab.Firewall(lab.Hosts[0], lab.Hosts[2]); err != nil {
		t.Fatal(err)
	}
	nodes := launchDataPlane(t, lab, map[int][]int{1: {0}, 2: {1}})
	waitOverlay(t, nodes[0], nodes[1], "fastdp", "", 30*time.Second)
	waitOverlay(t, nodes[2], nodes[1], "fastdp", "", 10*time.Second)
	pingOK(t, nodes[0], nodes[2].addr, 56) // the ARP request crosses 2 as a broadcast
	pingNoDup(t, nodes[0], nodes[2], 10)
	pingNoDup(t, nodes[2], nodes[0], 10)
	pingNoDup(t, nodes[0], nodes[1], 10)
}

// TestFastDPEncryptedStaysOnSleeve: with a password the pair never uses the kernel path
// (it has no encryption), and status says so.
func TestFastDPEncryptedStaysOnSleeve(t *testing.T) {
	testutil.RequireRoot(t)
	lab := netlab.New(t, netlab.Options{Hosts: 2})
	nodes := launchDataPlane(t, lab, map[int][]int{1: {0}}, "--password", "fastdp-secret")
	waitOverlay(t, nodes[0], nodes[1], "sleeve", "encryption", 30*time.Second)
	waitOverlay(t, nodes[1], nodes[0], "sleeve", "encryption", 10*time.Second)
	pingOK(t, nodes[0], nodes[1].addr, 56)
}
