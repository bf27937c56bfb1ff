package netns

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weavemesh/weave/fastdp/ovs"
	"github.com/weavemesh/weave/internal/netlab"
	"github.com/weavemesh/weave/internal/testutil"
)

// ovsUnderlayBridge is the lab's own OVS bridge owning eth0 on each host (the userspace
// datapath tunnels only through its own bridges); it is not weave's and must survive reset.
const ovsUnderlayBridge = "wul"

// TestOVSTwoHosts: two hosts each run ovsdb-server and ovs-vswitchd (userspace datapath)
// and a weaver launched with --datapath=ovs, no password. The pair goes to fastdp over OVS
// (fastdp's own heartbeats, through OVS), containers ping (also full-size) and stream with
// iperf3 while the sleeve's counters stay flat; `weavectl status connections` says fastdp.
// Then h1 resets through the API and h2 is stopped and reset afterwards (reset finds the
// OVS setup from the state dir): no OVS bridge or port of ours, no weave device is left,
// and the lab's own OVS bridge is untouched.
func TestOVSTwoHosts(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireCommands(t, "ovsdb-server", "ovsdb-tool", "ovs-vswitchd", "ovs-vsctl", "ovs-ofctl", "ethtool", "iperf3", "ping")
	lab := netlab.New(t, netlab.Options{Hosts: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	schema := filepath.Join(testutil.RepoRoot(t), "fastdp", "ovs", "schema", "vswitch.ovsschema")
	nodes := make([]*dpNode, len(lab.Hosts))
	socks := make([]string, len(lab.Hosts))
	links0 := make([]string, len(lab.Hosts))
	var routers []*router
	for i, h := range lab.Hosts {
		sock, err := h.StartOVS(ctx, schema)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.OVSNetdevUnderlay(ctx, sock, ovsUnderlayBridge); err != nil {
			t.Fatal(err)
		}
		socks[i] = sock
		links0[i] = linkNames(t, ctx, h)
		nodes[i] = &dpNode{h: h, r: newRouter(t, h), addr: containerAddr(i)}
		routers = append(routers, nodes[i].r)
	}
	dumpOnFailure(t, routers...)
	for i, n := range nodes {
		args := []string{"--datapath=ovs", "--ovs-datapath-type=netdev", "--ovs-socket", "unix:" + socks[i]}
		if i == 1 {
			args = append(args, lab.Hosts[0].Addr.String())
		}
		n.r.launch(args...)
		n.attachContainer(ctx, t)
	}
	a, b := nodes[0], nodes[1]
	conn := waitOverlay(t, a, b, "fastdp", "", 30*time.Second)
	waitOverlay(t, b, a, "fastdp", "", 10*time.Second)
	if out, err := a.r.ctl(ctx, "status", "connections"); err != nil || !strings.Contains(string(out), "fastdp") {
		t.Errorf("status connections: %v\n%s", err, out)
	} else {
		t.Logf("h1 status connections:\n%s", out)
	}
	// The tunnel port to h2 is active (untagged); nothing of the Linux VXLAN backend exists.
	port := ovs.PeerPort(b.h.Addr)
	if tag, err := netlab.Vsctl(socks[0], "get", "Port", port, "tag"); err != nil || tag != "[]" {
		t.Errorf("h1's tunnel port %s to h2: tag %q %v, want [] (active)", port, tag, err)
	}
	if out, err := a.h.Run(ctx, "ip", "link", "show", "dev", "vxlan-6784"); err == nil {
		t.Errorf("the Linux VXLAN device exists with --datapath=ovs:\n%s", out)
	}

	pingOK(t, a, b.addr, 56)
	pingOK(t, b, a.addr, 56)
	// A full-size packet crosses without fragmentation.
	pingOK(t, a, b.addr, conn.MTU-28, "-M", "do")

	before, kBefore := sleeveFrames(t, a), fastdpBytesOut(t, a)
	gbps := iperf(t, a, b, 2)
	after := sleeveFrames(t, a)
	t.Logf("OVS (netdev datapath): iperf3 one TCP stream %.3f Gbit/s, mtu %d; sleeve frames during it: %d", gbps, conn.MTU, after-before)
	if gbps <= 0.01 {
		t.Fatalf("iperf3 moved almost nothing: %.6f Gbit/s", gbps)
	}
	if after-before > 50 {
		t.Errorf("%d frames crossed the sleeve during the stream: OVS did not carry it", after-before)
	}

	// VXLAN dropped on h1's underlay bridge (the userspace datapath bypasses iptables, so
	// lab.BlockUDPPort cannot do it): the pair falls back to the sleeve, h1's tunnel port is
	// quarantined, ping keeps working without duplicates; unblocked, the heartbeats (which
	// reach a quarantined peer through the second heartbeat port) bring it back.
	dir, err := a.h.Dir()
	if err != nil {
		t.Fatal(err)
	}
	mgmt := "unix:" + filepath.Join(dir, ovsUnderlayBridge+".mgmt")
	const dropVXLAN = "priority=100,udp,tp_dst=6784"
	mustRun(t, ctx, a.h, "ovs-ofctl", "add-flow", mgmt, dropVXLAN+",actions=drop")
	start := time.Now()
	pingOK(t, a, b.addr, 56)
	c := waitOverlay(t, a, b, "sleeve", "udp-blocked", 15*time.Second)
	t.Logf("on sleeve %v after the block: %q", time.Since(start).Round(100*time.Millisecond), c.Info)
	if tag, err := netlab.Vsctl(socks[0], "get", "Port", port, "tag"); err != nil || tag != "4094" {
		t.Errorf("h1's tunnel port to h2 on sleeve: tag %q %v, want 4094 (quarantined)", tag, err)
	}
	pingNoDup(t, a, b, 5)
	pingNoDup(t, b, a, 5)
	mustRun(t, ctx, a.h, "ovs-ofctl", "--strict", "del-flows", mgmt, dropVXLAN)
	start = time.Now()
	waitOverlay(t, a, b, "fastdp", "", 30*time.Second)
	waitOverlay(t, b, a, "fastdp", "", 10*time.Second)
	t.Logf("back on fastdp %v after the unblock", time.Since(start).Round(100*time.Millisecond))
	pingNoDup(t, a, b, 5)

	// fastdp's counters are OVS's tunnel statistics (ovs-vswitchd writes them every 5 s,
	// long past by now): the stream is in them.
	streamed := uint64(gbps * 1e9 / 8 * 2)
	if sent := fastdpBytesOut(t, a) - kBefore; sent < streamed/2 {
		t.Errorf("weave_fastdp_bytes_total out grew by %d during a stream of ~%d bytes", sent, streamed)
	} else {
		t.Logf("weave_fastdp_bytes_total out grew by %d (stream ~%d bytes)", sent, streamed)
	}

	// h1: reset through the running daemon; h2: stop first, reset afterwards.
	if out, err := a.r.ctl(ctx, "reset"); err != nil {
		t.Fatalf("reset h1: %v\n%s", err, out)
	}
	if out, err := b.r.ctl(ctx, "stop"); err != nil {
		t.Fatalf("stop h2: %v\n%s", err, out)
	}
	if ports, err := netlab.Vsctl(socks[1], "list-ports", ovs.DefaultBridge); err != nil || ports == "" {
		t.Errorf("h2's OVS bridge after a stop: ports %q %v, want them kept", ports, err)
	}
	if out, err := b.r.ctl(ctx, "reset"); err != nil {
		t.Fatalf("reset h2: %v\n%s", err, out)
	}
	for i, n := range nodes {
		if brs, err := netlab.Vsctl(socks[i], "list-br"); err != nil || brs != ovsUnderlayBridge {
			t.Errorf("%s: OVS bridges after reset %q %v, want only %s", n.h.Name, brs, err, ovsUnderlayBridge)
		}
		ports, err := netlab.Vsctl(socks[i], "--columns=name", "--bare", "list", "Port")
		if got := strings.Join(strings.Fields(ports), " "); err != nil || got != "eth0 wul" && got != "wul eth0" {
			t.Errorf("%s: OVS ports after reset %q %v, want only the lab's eth0 and wul", n.h.Name, got, err)
		}
		// ovs-vswitchd removes the device of our OVS bridge by itself, a moment later.
		testutil.Eventually(t, 10*time.Second, n.h.Name+" links as before launch", func() error {
			if got := linkNames(t, ctx, n.h); got != links0[i] {
				return fmt.Errorf("links after reset:\n%s\nwant:\n%s", got, links0[i])
			}
			return nil
		})
		if _, err := os.Stat(filepath.Join(n.r.stateDir, "ovs-datapath")); !os.IsNotExist(err) {
			t.Errorf("%s: the OVS record is still in the state dir (%v)", n.h.Name, err)
		}
	}
}

// linkNames lists the links of h (a host or a container), sorted, one per line.
func linkNames(t *testing.T, ctx context.Context, h runner) string {
	t.Helper()
	return mustRun(t, ctx, h, "sh", "-c", "ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | sort")
}

// TestOVSMixedWithLinux: one host on the OVS backend, the other on the Linux VXLAN device.
// Both speak the same VXLAN (port, VNI) and the same heartbeats, so the pair goes to fastdp
// and the containers' traffic crosses OVS on one side and the kernel's VXLAN on the other.
// The OVS host is then relaunched (its OVS setup adopted) and relaunched on the Linux
// backend (its OVS setup removed); each time the pair returns to fastdp.
func TestOVSMixedWithLinux(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireCommands(t, "ovsdb-server", "ovsdb-tool", "ovs-vswitchd", "ovs-vsctl", "ethtool", "ping")
	lab := netlab.New(t, netlab.Options{Hosts: 2})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	h1 := lab.Hosts[0]
	sock, err := h1.StartOVS(ctx, filepath.Join(testutil.RepoRoot(t), "fastdp", "ovs", "schema", "vswitch.ovsschema"))
	if err != nil {
		t.Fatal(err)
	}
	if err := h1.OVSNetdevUnderlay(ctx, sock, ovsUnderlayBridge); err != nil {
		t.Fatal(err)
	}
	// A real NIC puts complete checksums on the wire; a lab veth hands partial ones on, which
	// h1's userspace datapath never completes.
	mustRun(t, ctx, lab.Hosts[1], "ethtool", "-K", netlab.UnderlayLink, "tx", "off")
	nodes := make([]*dpNode, 2)
	for i, h := range lab.Hosts {
		nodes[i] = &dpNode{h: h, r: newRouter(t, h), addr: containerAddr(i)}
	}
	dumpOnFailure(t, nodes[0].r, nodes[1].r)
	// No --mtu: a relaunch must come up with the same MTU as before, although our own
	// 1438-byte devices are then up on a host without a default route.
	ovsArgs := []string{"--datapath=ovs", "--ovs-datapath-type=netdev", "--ovs-socket", "unix:" + sock}
	nodes[0].r.launch(ovsArgs...)
	nodes[1].r.launch(h1.Addr.String())
	for _, n := range nodes {
		n.attachContainer(ctx, t)
	}
	a, b := nodes[0], nodes[1]
	conn := waitOverlay(t, a, b, "fastdp", "", 30*time.Second)
	waitOverlay(t, b, a, "fastdp", "", 10*time.Second)
	if _, err := b.h.Run(ctx, "ip", "link", "show", "dev", "vxlan-6784"); err != nil {
		t.Errorf("h2 (linux datapath) has no VXLAN device: %v", err)
	}
	pingOK(t, a, b.addr, 56)
	pingOK(t, b, a.addr, conn.MTU-28, "-M", "do")
	before := sleeveFrames(t, a)
	pingNoDup(t, a, b, 20)
	if d := sleeveFrames(t, a) - before; d > 5 {
		t.Errorf("%d frames crossed the sleeve during 20 pings: fastdp did not carry them", d)
	}

	// Stop and launch again: the OVS bridge, uplink and heartbeat ports are adopted, the
	// tunnel ports of the last run replaced, and the pair returns to fastdp.
	if out, err := a.r.ctl(ctx, "stop"); err != nil {
		t.Fatalf("stop h1: %v\n%s", err, out)
	}
	a.r.launch(ovsArgs...)
	waitOverlay(t, a, b, "fastdp", "", 30*time.Second)
	waitOverlay(t, b, a, "fastdp", "", 10*time.Second)
	pingNoDup(t, a, b, 10)
	if ports, err := netlab.Vsctl(sock, "list-ports", ovs.DefaultBridge); err != nil ||
		strings.Join(strings.Fields(ports), " ") != strings.Join([]string{ovs.PeerPort(lab.Hosts[1].Addr), ovs.HeartbeatOVS0, ovs.HeartbeatOVS1, ovs.UplinkOVS}, " ") &&
			strings.Join(strings.Fields(ports), " ") != strings.Join([]string{ovs.HeartbeatOVS0, ovs.HeartbeatOVS1, ovs.UplinkOVS, ovs.PeerPort(lab.Hosts[1].Addr)}, " ") {
		t.Errorf("h1's OVS ports after the relaunch: %q %v", ports, err)
	}

	// Back to the Linux backend across a stop: the OVS setup goes (it would carry frames
	// too), the VXLAN device comes, the pair returns to fastdp without duplicates.
	if out, err := a.r.ctl(ctx, "stop"); err != nil {
		t.Fatalf("stop h1: %v\n%s", err, out)
	}
	a.r.launch()
	waitOverlay(t, a, b, "fastdp", "", 30*time.Second)
	waitOverlay(t, b, a, "fastdp", "", 10*time.Second)
	if brs, err := netlab.Vsctl(sock, "list-br"); err != nil || brs != ovsUnderlayBridge {
		t.Errorf("OVS bridges after switching to --datapath=linux: %q %v, want only %s", brs, err, ovsUnderlayBridge)
	}
	for _, dev := range []string{ovs.UplinkOVS, ovs.HeartbeatHost0, ovs.HeartbeatHost1} {
		if out, err := a.h.Run(ctx, "ip", "link", "show", "dev", dev); err == nil {
			t.Errorf("%s left after switching to --datapath=linux:\n%s", dev, out)
		}
	}
	mustRun(t, ctx, a.h, "ip", "link", "show", "dev", "vxlan-6784")
	pingNoDup(t, a, b, 10)
	pingNoDup(t, b, a, 10)
}

// fastdpBytesOut is fastdp's outgoing byte counter from n's metrics.
func fastdpBytesOut(t *testing.T, n *dpNode) uint64 {
	t.Helper()
	return uint64(metricValue(t, n.r.metrics(), `weave_fastdp_bytes_total{direction="out"}`))
}
