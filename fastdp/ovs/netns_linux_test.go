package ovs

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/netlab"
	"github.com/weavemesh/weave/internal/testutil"
)

// ovsHost is one lab host running its own ovsdb-server and ovs-vswitchd (userspace datapath).
type ovsHost struct {
	h    *netlab.Host
	sock string
	b    *Backend // the weave bridge under test
	c    *netlab.Container
	addr netip.Addr // the container's overlay address
}

func (o *ovsHost) run(t *testing.T, argv ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := o.h.Run(ctx, argv...)
	if err != nil {
		t.Fatalf("%s: %v", o.h.Name, err)
	}
	return string(out)
}

// startOVS starts ovsdb-server and ovs-vswitchd in h's namespace (netlab.Host.StartOVS).
func startOVS(t *testing.T, h *netlab.Host) *ovsHost {
	t.Helper()
	sock, err := h.StartOVS(t.Context(), schemaFile)
	if err != nil {
		t.Fatal(err)
	}
	return &ovsHost{h: h, sock: sock}
}

// waitLink waits until dev exists in ns (gone=false) or no longer does (gone=true).
func waitLink(t *testing.T, n netlab.Runner, dev string, gone bool) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, fmt.Sprintf("link %s gone=%v", dev, gone), func() error {
		_, err := n.Run(context.Background(), "ip", "link", "show", "dev", dev)
		switch {
		case gone && err == nil:
			return fmt.Errorf("%s still there", dev)
		case !gone && err != nil:
			return err
		}
		return nil
	})
}

// underlay moves the host's underlay address onto an OVS netdev bridge "wul" that owns
// eth0 (netlab.Host.OVSNetdevUnderlay): scaffolding a netdev host needs, not ours to clean.
func (o *ovsHost) underlay(t *testing.T) {
	t.Helper()
	if err := o.h.OVSNetdevUnderlay(t.Context(), o.sock, "wul"); err != nil {
		t.Fatal(err)
	}
}

// container adds a container whose veth's host end "vo1" is a port of our bridge; both ends
// have TX checksum offload off (the userspace datapath never completes partial checksums).
func (o *ovsHost) container(t *testing.T, addr netip.Prefix, mtu int) {
	t.Helper()
	c, err := o.h.AddContainer("c1")
	if err != nil {
		t.Fatal(err)
	}
	o.c, o.addr = c, addr.Addr()
	m := strconv.Itoa(mtu)
	o.run(t, "ip", "link", "add", "vo1", "mtu", m, "type", "veth", "peer", "name", "eth0", "mtu", m, "netns", c.Name)
	o.run(t, "ethtool", "-K", "vo1", "tx", "off")
	o.run(t, "ip", "link", "set", "vo1", "up")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, argv := range [][]string{
		{"ethtool", "-K", "eth0", "tx", "off"},
		{"ip", "addr", "add", addr.String(), "dev", "eth0"},
		{"ip", "link", "set", "eth0", "up"},
	} {
		if out, err := c.Run(ctx, argv...); err != nil {
			t.Fatalf("%s: %v\n%s", c.Name, err, out)
		}
	}
	if err := o.b.AddLocalPort("vo1", true); err != nil {
		t.Fatal(err)
	}
}

// linuxBridgeContainer is the daemon's design: our OVS bridge joined by the uplink veth
// pair to the Linux bridge "weave", where the container is attached as weavectl attach or
// the CNI plugin would do it, with its offloads left on.
func (o *ovsHost) linuxBridgeContainer(t *testing.T, addr netip.Prefix, mtu int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := o.h.EnsureBridge(ctx, "weave"); err != nil {
		t.Fatal(err)
	}
	for range 2 { // idempotent
		if err := o.b.AttachLinuxBridge("weave", mtu); err != nil {
			t.Fatal(err)
		}
	}
	c, err := o.h.AddContainer("c1")
	if err != nil {
		t.Fatal(err)
	}
	if err := o.h.AttachContainerToBridge(c, "weave", addr); err != nil {
		t.Fatal(err)
	}
	o.c, o.addr = c, addr.Addr()
	if out := o.run(t, "ip", "-d", "link", "show", UplinkBridge); !strings.Contains(out, "isolated on") || !strings.Contains(out, "master weave") {
		t.Fatalf("uplink bridge end not an isolated port of weave:\n%s", out)
	}
	if out := o.run(t, "ethtool", "-k", UplinkOVS); !strings.Contains(out, "tx-checksumming: off") {
		t.Fatalf("uplink OVS end keeps TX checksum offload:\n%s", out)
	}
}

var rttAvg = regexp.MustCompile(`= [0-9.]+/([0-9.]+)/`)

// TestOVSPingIperfAndCleanup: three hosts, each with its own ovsdb-server and ovs-vswitchd
// in userspace mode; a container on each host's weave OVS bridge; the bridges in a full mesh
// of VXLAN ports. Ping and a 2 s iperf3 cross; a broadcast reaches every other container
// exactly once (split horizon: no loop through a third host), and no more a peer whose port
// was removed; Cleanup removes every bridge, port and device of ours and nothing else.
func TestOVSPingIperfAndCleanup(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireCommands(t, "ovsdb-server", "ovsdb-tool", "ovs-vswitchd", "ovs-vsctl", "ethtool", "iperf3", "ping")
	lab := netlab.New(t, netlab.Options{Hosts: 3})
	const vxlanPort, vni = 6784, 0x5eed
	names := []string{"aa:00:00:00:00:01", "aa:00:00:00:00:02", "aa:00:00:00:00:03"}
	hosts := make([]*ovsHost, len(lab.Hosts))
	for i, h := range lab.Hosts {
		o := startOVS(t, h)
		o.underlay(t)
		links, err := NewNetlinkLinks(filepath.Join("/var/run/netns", h.Name))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { links.Close() })
		o.b = newBackend(t, Config{Socket: o.sock, DatapathType: "netdev", Port: vxlanPort, VNI: vni, Links: links})
		if err := o.b.EnsureBridge(); err != nil {
			t.Fatal(err)
		}
		// Safety net if the test fails before its own Cleanup (runs before the lab's teardown).
		t.Cleanup(func() { _ = o.b.Cleanup() })
		addr := netip.MustParsePrefix(fmt.Sprintf("10.40.0.%d/24", i+1))
		if i < 2 {
			o.container(t, addr, 1450)
		} else {
			o.linuxBridgeContainer(t, addr, 1450)
		}
		hosts[i] = o
	}
	for i, o := range hosts {
		for j, peer := range hosts {
			if i != j {
				if err := o.b.AddPeer(names[j], peer.h.Addr); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	for i, o := range hosts {
		local := "vo1"
		if i == 2 {
			local = UplinkOVS
		}
		for j, port := range []string{local, TunnelName(names[0]), TunnelName(names[1]), TunnelName(names[2])} {
			if j == i+1 {
				continue
			}
			testutil.Eventually(t, 10*time.Second, "port "+port+" configured", func() error {
				if msg := o.b.InterfaceError(port); msg != "" {
					return fmt.Errorf("%s on %s: %s", port, o.h.Name, msg)
				}
				out, err := vsctl(o.sock, "get", "Interface", port, "ofport")
				if err != nil {
					return err
				}
				if n, _ := strconv.Atoi(out); n <= 0 {
					return fmt.Errorf("%s on %s: ofport %s", port, o.h.Name, out)
				}
				return nil
			})
		}
	}

	a, b := hosts[0], hosts[1]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// The first frames wait for ARP on the underlay and the overlay: poll until one passes.
	testutil.Eventually(t, 15*time.Second, "first ping across OVS", func() error {
		out, err := a.c.Run(ctx, "ping", "-c", "1", "-W", "1", b.addr.String())
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
	out, err := a.c.Run(ctx, "ping", "-c", "10", "-i", "0.1", "-W", "1", b.addr.String())
	if err != nil {
		t.Fatalf("ping: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), " 0% packet loss") {
		t.Fatalf("ping lost packets:\n%s", out)
	}
	if m := rttAvg.FindSubmatch(out); m != nil {
		t.Logf("ping over OVS netdev VXLAN: avg RTT %s ms", m[1])
	}
	// A full-size frame (1450 MTU - 28) crosses too, without fragmentation.
	if out, err := b.c.Run(ctx, "ping", "-c", "2", "-i", "0.2", "-W", "1", "-M", "do", "-s", "1422", a.addr.String()); err != nil {
		t.Fatalf("full-size ping: %v\n%s", err, out)
	}

	for _, to := range []*ovsHost{b, hosts[2]} {
		if out, err := to.c.Run(ctx, "ping", "-c", "3", "-i", "0.1", "-W", "1", a.addr.String()); err != nil {
			t.Fatalf("ping %s -> %s: %v\n%s", to.c.Name, a.addr, err, out)
		}
		gbps := iperf(t, a, to, 2)
		t.Logf("iperf3 over OVS netdev VXLAN, h1 (container on OVS) -> h%d (%s): %.3f Gbit/s",
			to.h.Index+1, map[bool]string{true: "container on OVS", false: "container on the Linux bridge, uplink veth"}[to == b], gbps)
		if gbps <= 0.01 {
			t.Fatalf("iperf3 moved almost nothing: %.6f Gbit/s", gbps)
		}
	}
	// The other way, from the container on the Linux bridge with its offloads on (TSO
	// super-frames and partial checksums, finished by the kernel at the uplink veth).
	gbps := iperf(t, a, hosts[2], 2, "-R")
	t.Logf("iperf3 over OVS netdev VXLAN, h3 (Linux bridge, offloads on) -> h1: %.3f Gbit/s", gbps)
	if gbps <= 0.01 {
		t.Fatalf("iperf3 -R moved almost nothing: %.6f Gbit/s", gbps)
	}

	// Broadcasts: one copy per other container, also through a full mesh of three.
	rx := func(skip int) map[string]*os.File {
		m := map[string]*os.File{}
		for i, o := range hosts {
			if i != skip {
				m[o.c.Name] = packetSocket(t, o.c.Netns(), "eth0")
			}
		}
		return m
	}
	const n = 20
	for src := range hosts {
		send := packetSocket(t, hosts[src].c.Netns(), "eth0")
		r := rx(src)
		want := map[string]int{}
		for name := range r {
			want[name] = n
		}
		if got := burst(t, send, byte(src), n, r); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("broadcast from %s: received %v, want %v", hosts[src].c.Name, got, want)
		}
	}
	// h1 quarantines its tunnel to h3 (the pair left fastdp): nothing flows between c1 and
	// c3 either way, not even VLAN-tagged (a packet socket sees untagged inner frames too),
	// and h2 does not relay; reactivated, both directions flow again.
	if err := a.b.SetPeerActive(names[2], false); err != nil {
		t.Fatal(err)
	}
	quiet := map[string]int{hosts[1].c.Name: n, hosts[2].c.Name: 0}
	testutil.Eventually(t, 10*time.Second, "h1-h3 quarantined", func() error {
		if got := burst(t, packetSocket(t, a.c.Netns(), "eth0"), 0, n, rx(0)); fmt.Sprint(got) != fmt.Sprint(quiet) {
			return fmt.Errorf("broadcast from h1 with h3 inactive: received %v, want %v", got, quiet)
		}
		return nil
	})
	quiet = map[string]int{hosts[0].c.Name: 0, hosts[1].c.Name: n}
	if got := burst(t, packetSocket(t, hosts[2].c.Netns(), "eth0"), 2, n, rx(2)); fmt.Sprint(got) != fmt.Sprint(quiet) {
		t.Fatalf("broadcast from h3 with h1's port to it inactive: received %v, want %v", got, quiet)
	}
	if err := a.b.SetPeerActive(names[2], true); err != nil {
		t.Fatal(err)
	}
	all := map[string]int{hosts[1].c.Name: n, hosts[2].c.Name: n}
	testutil.Eventually(t, 10*time.Second, "h1-h3 active again", func() error {
		if got := burst(t, packetSocket(t, a.c.Netns(), "eth0"), 0, n, rx(0)); fmt.Sprint(got) != fmt.Sprint(all) {
			return fmt.Errorf("broadcast from h1 with h3 active again: received %v, want %v", got, all)
		}
		return nil
	})
	if out, err := hosts[2].c.Run(ctx, "ping", "-c", "1", "-W", "2", a.addr.String()); err != nil {
		t.Fatalf("ping h3 -> h1 after reactivation: %v\n%s", err, out)
	}

	// h1 drops its tunnel to h3: h3 no longer hears h1's broadcasts, and h2 does not relay them.
	if err := a.b.RemovePeer(names[2]); err != nil {
		t.Fatal(err)
	}
	if _, err := vsctl(a.sock, "get", "Port", TunnelName(names[2]), "name"); err == nil {
		t.Fatal("removed peer's port still in h1's database")
	}
	r := rx(0)
	want := map[string]int{hosts[1].c.Name: n, hosts[2].c.Name: 0}
	testutil.Eventually(t, 10*time.Second, "h3 no longer hears h1", func() error {
		if got := burst(t, packetSocket(t, a.c.Netns(), "eth0"), 0, n, r); fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("broadcast from h1 after RemovePeer(h3): received %v, want %v", got, want)
		}
		return nil
	})

	// Reset: our bridge, ports and the owned veths go; the underlay bridge of another owner stays.
	for _, o := range hosts {
		if err := o.b.Cleanup(); err != nil {
			t.Fatal(err)
		}
		if brs, err := vsctl(o.sock, "list-br"); err != nil || brs != "wul" {
			t.Errorf("%s bridges after cleanup: %q %v, want only wul", o.h.Name, brs, err)
		}
		if ports, err := vsctl(o.sock, "--columns=name", "--bare", "list", "Port"); err != nil || strings.Join(strings.Fields(ports), " ") != "eth0 wul" && strings.Join(strings.Fields(ports), " ") != "wul eth0" {
			t.Errorf("%s ports after cleanup: %q %v, want only the underlay's", o.h.Name, ports, err)
		}
		if o.h.Index < 2 {
			waitLink(t, o.h, "vo1", true)
			waitLink(t, o.c, "eth0", true)
		} else {
			waitLink(t, o.h, UplinkOVS, true)
			waitLink(t, o.h, UplinkBridge, true)
			waitLink(t, o.h, "weave", false) // the Linux bridge is not ours
		}
		waitLink(t, o.h, DefaultBridge, true) // ovs-vswitchd removes the bridge's own device
		if len(o.b.Peers()) != 0 {
			t.Errorf("%s: peers after cleanup: %v", o.h.Name, o.b.Peers())
		}
	}
}

// iperf runs one TCP stream for secs seconds from a's container to b's (extra "-R": from b's
// to a's) and returns the received rate in Gbit/s.
func iperf(t *testing.T, a, b *ovsHost, secs int, extra ...string) float64 {
	t.Helper()
	gbps, err := netlab.Iperf(context.Background(), a.c, b.c, b.addr, secs, extra...)
	if err != nil {
		t.Fatal(err)
	}
	return gbps
}
