package netns

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/netlab"
	"github.com/weavemesh/weave/internal/testutil"
)

// dpNode is one host of a data-plane test: its router and one attached container.
type dpNode struct {
	h    *netlab.Host
	r    *router
	c    *netlab.Container
	addr netip.Addr // the container's overlay address
}

// containerAddr gives host i's container 10.32.<i+1>.1 inside the default /12.
func containerAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 32, byte(i + 1), 1}) }

// launchDataPlane launches routers on the lab's hosts, host i dialling the hosts in
// peers[i], and attaches one container to each.
func launchDataPlane(t *testing.T, lab *netlab.Lab, peers map[int][]int, args ...string) []*dpNode {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	nodes := make([]*dpNode, len(lab.Hosts))
	var routers []*router
	for i, h := range lab.Hosts {
		nodes[i] = &dpNode{h: h, r: newRouter(t, h), addr: containerAddr(i)}
		routers = append(routers, nodes[i].r)
	}
	dumpOnFailure(t, routers...)
	for i, n := range nodes {
		a := append([]string{}, args...)
		for _, p := range peers[i] {
			a = append(a, lab.Hosts[p].PublicAddr.String())
		}
		n.r.launch(a...)
		n.attachContainer(ctx, t)
	}
	return nodes
}

// attachContainer gives n a container "c" attached to its router with n.addr/12.
func (n *dpNode) attachContainer(ctx context.Context, t *testing.T) {
	t.Helper()
	c, err := n.h.AddContainer("c")
	if err != nil {
		t.Fatal(err)
	}
	n.c = c
	if out, err := n.r.ctl(ctx, "attach", n.addr.String()+"/12", c.Name); err != nil {
		t.Fatalf("attach in %s: %v\n%s", n.h.Name, err, out)
	}
}

// waitEstablished waits until n has an established sleeve connection to each of want.
func waitEstablished(t *testing.T, n *dpNode, want int) {
	t.Helper()
	testutil.Eventually(t, 30*time.Second, n.h.Name+" connections established", func() error {
		rep := n.r.report()
		est := 0
		for _, c := range rep.Router.Connections {
			if c.State == "established" {
				est++
			}
		}
		if est < want {
			return fmt.Errorf("%d of %d connections established: %+v", est, want, rep.Router.Connections)
		}
		return nil
	})
}

// pingOK waits until from reaches to with ping (the first ARP may take a moment), then
// checks that count pings of size bytes all come back.
func pingOK(t *testing.T, from *dpNode, to netip.Addr, size int, extra ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	args := append([]string{"ping", "-c", "1", "-W", "1", "-s", fmt.Sprint(size)}, extra...)
	args = append(args, to.String())
	testutil.Eventually(t, 30*time.Second, fmt.Sprintf("%s pings %s", from.h.Name, to), func() error {
		out, err := from.c.Run(ctx, args...)
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
	args[2] = "3"
	if out, err := from.c.Run(ctx, args...); err != nil {
		t.Fatalf("%s -> %s: %v\n%s", from.h.Name, to, err, out)
	}
}

// iperf runs one TCP stream for secs seconds from a to b's container and returns the
// received rate in Gbit/s.
func iperf(t *testing.T, a, b *dpNode, secs int) float64 {
	t.Helper()
	gbps, err := netlab.Iperf(context.Background(), a.c, b.c, b.addr, secs)
	if err != nil {
		t.Fatal(err)
	}
	return gbps
}

// capture records the sleeve's UDP on h's underlay link while fn runs, and returns the pcap.
func capture(t *testing.T, h *netlab.Host, fn func()) []byte {
	t.Helper()
	testutil.RequireCommands(t, "tcpdump")
	dir, err := h.Dir()
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "underlay.pcap")
	p, err := h.Start("tcpdump", nil, "tcpdump", "-n", "-U", "-s", "0", "-i", netlab.UnderlayLink,
		"-w", file, "udp", "port", "6783")
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "tcpdump listening", func() error {
		if !strings.Contains(p.Log(), "listening on") {
			return fmt.Errorf("not yet: %s", p.Log())
		}
		return nil
	})
	fn()
	p.Signal(syscall.SIGINT)
	select {
	case <-p.Exited():
	case <-time.After(10 * time.Second):
		t.Fatal("tcpdump did not stop")
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestDataPlaneTwoHosts: containers on two hosts ping and stream across the sleeve, in
// plaintext and encrypted. The underlay capture shows the ping's marker pattern in
// plaintext mode (so the check can fail) and never with a password.
func TestDataPlaneTwoHosts(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireCommands(t, "iperf3", "ping")
	const pattern = "5eaf5eaf0badcafe"
	marker := []byte{0x5e, 0xaf, 0x5e, 0xaf, 0x0b, 0xad, 0xca, 0xfe}
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"plaintext", []string{"--no-fastdp"}}, // the sleeve itself: fastdp has its own tests
		{"encrypted", []string{"--password", "netns-secret"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lab := netlab.New(t, netlab.Options{Hosts: 2})
			nodes := launchDataPlane(t, lab, map[int][]int{1: {0}}, tc.args...)
			waitEstablished(t, nodes[0], 1)
			waitEstablished(t, nodes[1], 1)
			for _, c := range nodes[0].r.report().Router.Connections {
				if c.State == "established" && c.Overlay != "" && c.Overlay != "sleeve" {
					t.Errorf("connection over %q, want sleeve", c.Overlay)
				}
			}
			pingOK(t, nodes[0], nodes[1].addr, 56)
			pingOK(t, nodes[1], nodes[0].addr, 56)
			pcap := capture(t, nodes[0].h, func() {
				pingOK(t, nodes[0], nodes[1].addr, 1000, "-p", pattern)
			})
			if len(pcap) < 1000 {
				t.Fatalf("capture of %d bytes: the pings did not cross the underlay as sleeve UDP", len(pcap))
			}
			seen := bytes.Contains(pcap, marker)
			if encrypted := slices.Contains(tc.args, "--password"); encrypted == seen {
				t.Errorf("encrypted=%v but the marker is visible on the underlay: %v", encrypted, seen)
			}
			gbps := iperf(t, nodes[0], nodes[1], 2)
			t.Logf("%s: iperf3 one TCP stream %.2f Gbit/s", tc.name, gbps)
			if gbps <= 0 {
				t.Error("iperf3 moved nothing")
			}
			// The stream's TSO super-frames crossed whole (GSO passthrough), not cut.
			if v := metricValue(t, nodes[0].r.metrics(), `weave_router_frames_total{event="gso_whole"}`); v < 100 {
				t.Errorf("sender passed %v super-frames whole to the sleeve, want >= 100", v)
			}
			if v := metricValue(t, nodes[1].r.metrics(), `weave_sleeve_refused_total{reason="gso_incomplete"}`); v > 100 {
				t.Errorf("receiver dropped %v incomplete super-frames", v)
			}
		})
	}
}

// TestDataPlaneFirewalledRelay: five hosts, 1 knows 2 and 3, 3 knows 4 and 5, and 1 cannot
// talk to 4 or 5 at all: 1's container still reaches every other container, 4 and 5
// through 3.
func TestDataPlaneFirewalledRelay(t *testing.T) {
	testutil.RequireRoot(t)
	lab := netlab.New(t, netlab.Options{Hosts: 5})
	h := lab.Hosts
	for _, p := range [][2]int{{0, 3}, {0, 4}} {
		if err := lab.Firewall(h[p[0]], h[p[1]]); err != nil {
			t.Fatal(err)
		}
	}
	nodes := launchDataPlane(t, lab, map[int][]int{0: {1, 2}, 2: {3, 4}}, "--password", "relay-secret")
	waitEstablished(t, nodes[0], 2)
	waitEstablished(t, nodes[3], 1)
	waitEstablished(t, nodes[4], 1)
	for _, to := range nodes[1:] {
		pingOK(t, nodes[0], to.addr, 56)
	}
	pingOK(t, nodes[3], nodes[0].addr, 1200)
	pingOK(t, nodes[4], nodes[1].addr, 56)
	// TCP through a relay: it puts each super-frame back together and sends it on whole.
	// The relay is 3, or 2 once peer discovery has connected 2 and 4 as well.
	if gbps := iperf(t, nodes[0], nodes[3], 1); gbps <= 0 {
		t.Error("TCP moved nothing through the relay")
	}
	var relayed, whole float64
	for _, n := range nodes[1:3] {
		m := n.r.metrics()
		relayed += metricValue(t, m, `weave_router_frames_total{event="relayed"}`)
		whole += metricValue(t, m, `weave_router_frames_total{event="gso_whole"}`)
	}
	if relayed < 100 {
		t.Errorf("the relays passed on %v frames, want >= 100", relayed)
	}
	if whole < 10 {
		t.Errorf("the relays passed on %v super-frames whole, want >= 10", whole)
	}
}

// metricValue returns the value of the sample named series (name{labels}) in a scrape.
func metricValue(t *testing.T, scrape, series string) float64 {
	t.Helper()
	for _, line := range strings.Split(scrape, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("metric %s: %v", series, err)
			}
			return f
		}
	}
	t.Fatalf("no metric %s in the scrape", series)
	return 0
}

// TestDataPlanePathMTU: the far end's underlay link has MTU 1200, which nothing tells the
// sender (the bridge drops larger frames silently): the sleeve's probes find it, a 10 KB
// ping crosses (fragmented to fit) and TCP works through the ICMP "fragmentation needed"
// the router synthesizes.
func TestDataPlanePathMTU(t *testing.T) {
	testutil.RequireRoot(t)
	lab := netlab.New(t, netlab.Options{Hosts: 2})
	if err := lab.SetMTU(lab.Hosts[1], 1200); err != nil {
		t.Fatal(err)
	}
	nodes := launchDataPlane(t, lab, map[int][]int{1: {0}})
	waitEstablished(t, nodes[0], 1)
	waitEstablished(t, nodes[1], 1)
	for _, c := range nodes[0].r.report().Router.Connections {
		if c.MTU != 0 && c.MTU != 1200-62 {
			t.Errorf("connection mtu %d, want %d", c.MTU, 1200-62)
		}
	}
	pingOK(t, nodes[0], nodes[1].addr, 10000)
	pingOK(t, nodes[1], nodes[0].addr, 10000)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, _ := nodes[0].c.Run(ctx, "ping", "-c", "2", "-W", "1", "-M", "do", "-s", "1400", nodes[1].addr.String())
	if !strings.Contains(string(out), "1138") {
		t.Errorf("a DF ping too big for the path did not learn mtu 1138:\n%s", out)
	}
	if gbps := iperf(t, nodes[0], nodes[1], 1); gbps <= 0 {
		t.Error("TCP moved nothing across the lowered path")
	}
}

// TestDataPlaneNAT: a host behind a NAT dials out; containers reach each other both ways.
func TestDataPlaneNAT(t *testing.T) {
	testutil.RequireRoot(t)
	lab := netlab.New(t, netlab.Options{Hosts: 2, NAT: []int{1}})
	nodes := launchDataPlane(t, lab, map[int][]int{1: {0}}, "--password", "nat-secret")
	waitEstablished(t, nodes[0], 1)
	waitEstablished(t, nodes[1], 1)
	pingOK(t, nodes[0], nodes[1].addr, 56)
	pingOK(t, nodes[1], nodes[0].addr, 1300)
}

// TestDataPlaneLossyPath: on a path that loses datagrams, losing one piece loses a whole
// super-frame, so the receiver reports its losses in the sleeve heartbeats and the sender
// goes back to cut TCP segments for a while; TCP keeps working throughout.
func TestDataPlaneLossyPath(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireCommands(t, "iperf3")
	lab := netlab.New(t, netlab.Options{Hosts: 2})
	nodes := launchDataPlane(t, lab, map[int][]int{1: {0}}, "--no-fastdp")
	waitEstablished(t, nodes[0], 1)
	waitEstablished(t, nodes[1], 1)
	// The lab drops whole GSO skbs (iptables sees one UDP GSO send as one packet), so a
	// dropped packet here is a whole super-frame: it takes more than the 5% threshold.
	if err := lab.DropPercent(lab.Hosts[1], 10); err != nil {
		t.Fatal(err)
	}
	// Losses are random: stream until the sender has heard of enough of them.
	testutil.Eventually(t, 60*time.Second, "the sender backs off from whole super-frames", func() error {
		if gbps := iperf(t, nodes[0], nodes[1], 2); gbps <= 0 {
			t.Fatal("TCP moved nothing over the lossy path")
		}
		if v := metricValue(t, nodes[0].r.metrics(), "weave_sleeve_gso_backoffs_total"); v < 1 {
			return fmt.Errorf("no back-off yet")
		}
		return nil
	})
	if gbps := iperf(t, nodes[0], nodes[1], 1); gbps <= 0 {
		t.Error("TCP moved nothing after the back-off")
	}
	if v := metricValue(t, nodes[0].r.metrics(), `weave_router_frames_total{event="gso_cut"}`); v < 1 {
		t.Errorf("the sender cut no super-frame after backing off")
	}
	t.Logf("receiver counted %v lost super-frames", metricValue(t, nodes[1].r.metrics(), `weave_sleeve_refused_total{reason="gso_incomplete"}`))
}
