package netns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weavemesh/weave/api"
	"github.com/weavemesh/weave/fastdp"
	"github.com/weavemesh/weave/fastdp/guard"
	"github.com/weavemesh/weave/fastdp/ovs"
	"github.com/weavemesh/weave/internal/netlab"
	"github.com/weavemesh/weave/internal/testutil"
)

// Source MACs of injected frames: each sender gets its own, so the victim's capture tells
// who got through.
var (
	macOutsider = [6]byte{0x02, 0xe7, 0x11, 0, 0, 0x03} // a host that is no peer
	macMember   = [6]byte{0x02, 0xe7, 0x11, 0, 0, 0x02} // a peer's underlay address
	// unusedAddr is an overlay address nobody has: a claim to it poisons nothing.
	unusedAddr = netip.MustParseAddr("10.32.99.98")
)

// launchOn launches routers on the given hosts only (the lab's others stay outsiders), host
// i dialling the hosts in peers[i], and attaches one container to each.
func launchOn(t *testing.T, hosts []*netlab.Host, peers map[int][]int, args ...string) []*dpNode {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	nodes := make([]*dpNode, len(hosts))
	var routers []*router
	for i, h := range hosts {
		nodes[i] = &dpNode{h: h, r: newRouter(t, h), addr: containerAddr(i)}
		routers = append(routers, nodes[i].r)
	}
	dumpOnFailure(t, routers...)
	for i, n := range nodes {
		a := append([]string{}, args...)
		for _, p := range peers[i] {
			a = append(a, hosts[p].PublicAddr.String())
		}
		n.r.launch(a...)
		n.attachContainer(ctx, t)
	}
	return nodes
}

// containerMAC is the MAC of n's container interface.
func containerMAC(t *testing.T, n *dpNode) [6]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out := mustRun(t, ctx, n.c, "cat", "/sys/class/net/ethwe/address")
	hw, err := net.ParseMAC(strings.TrimSpace(out))
	if err != nil || len(hw) != 6 {
		t.Fatalf("container MAC of %s: %q: %v", n.h.Name, out, err)
	}
	return [6]byte(hw)
}

// inject sends, from sender's namespace to victim's VXLAN port with the mesh's VNI, the
// frames an attacker would: a gratuitous ARP claiming claim (broadcast; the address of a
// peer's container poisons the victim's ARP cache), an ICMP echo to the victim's container
// (unicast to its MAC), and the same echo broadcast; all with source MAC src.
func inject(t *testing.T, sender netlab.PacketListener, victim *dpNode, claim netip.Addr, victimMAC, src [6]byte) {
	t.Helper()
	vni := fastdp.VNIFor(api.DefaultIPRange)
	forged := netip.MustParseAddr("10.32.99.99")
	frames := [][]byte{
		netlab.GratuitousARP(src, claim),
		netlab.ICMPEcho(victimMAC, src, forged, victim.addr, 0x4242, 1, []byte("injected unicast")),
		netlab.ICMPEcho(netlab.Broadcast, src, forged, victim.addr, 0x4242, 2, []byte("injected broadcast")),
	}
	var dgrams [][]byte
	for _, f := range frames {
		dgrams = append(dgrams, netlab.VXLAN(vni, f))
	}
	if err := netlab.SendUDP(sender, netip.AddrPortFrom(victim.h.Addr, fastdpPort), dgrams...); err != nil {
		t.Fatal(err)
	}
}

// arrived reads what the victim's container interface captured (in order) until a frame
// from stop, and returns how many frames from each of srcs came before it. The frame from
// stop was sent after the injections, so they had their chance to arrive.
func arrived(t *testing.T, sock *os.File, stop [6]byte, srcs ...[6]byte) map[[6]byte]int {
	t.Helper()
	counts, found, err := netlab.FramesFrom(sock, stop, 15*time.Second, srcs...)
	if err != nil {
		t.Fatal(err)
	}
	if !found {
		t.Fatalf("the control frame from %x never reached the container: the check proves nothing (counts so far %v)", stop, counts)
	}
	return counts
}

// noPoison fails if n's container learned mac for any neighbour.
func noPoison(t *testing.T, n *dpNode, mac [6]byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out := mustRun(t, ctx, n.c, "ip", "neigh", "show")
	if strings.Contains(out, net.HardwareAddr(mac[:]).String()) {
		t.Errorf("%s's container ARP cache was poisoned with %x:\n%s", n.h.Name, mac, out)
	}
}

// guardState reads the fastdp guard table inside h.
func guardState(t *testing.T, h *netlab.Host) guard.State {
	t.Helper()
	var st guard.State
	if err := h.Do(func() (err error) { st, err = guard.Read(""); return err }); err != nil {
		t.Fatal(err)
	}
	return st
}

// vxlanRefused is the weave_fastdp_refused_total of n's router.
func vxlanRefused(t *testing.T, n *dpNode) float64 {
	t.Helper()
	return metricValue(t, n.r.metrics(), `weave_fastdp_refused_total{reason="unknown_source"}`)
}

// TestHostileVXLANPlaintextMesh: without a password, VXLAN datagrams with the mesh's VNI
// reach the containers only from peers on fastdp with us. An outsider's injected ARP and
// ICMP (broadcast and unicast inner MACs) reach nothing and are counted; the same frames
// sent afterwards from the fastdp peer's address do arrive (the control: it shows the
// injection itself works, and that the outsider's had time to); and normal fastdp traffic
// between the members still flows.
func TestHostileVXLANPlaintextMesh(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireCommands(t, "ping")
	lab := netlab.New(t, netlab.Options{Hosts: 3})
	nodes := launchOn(t, lab.Hosts[:2], map[int][]int{1: {0}})
	a, b, outsider := nodes[0], nodes[1], lab.Hosts[2]
	waitOverlay(t, a, b, "fastdp", "", 30*time.Second)
	waitOverlay(t, b, a, "fastdp", "", 10*time.Second)
	pingOK(t, a, b.addr, 56) // a's container now has b's container in its ARP cache

	victimMAC := containerMAC(t, a)
	sock := netlab.PacketSocketT(t, a.c.Name, "ethwe", netlab.EtherTypeAll)
	inject(t, outsider, a, b.addr, victimMAC, macOutsider)
	// The member's frames claim an unused address: they arrive, and must not break the
	// pings below.
	inject(t, b.h, a, unusedAddr, victimMAC, macMember)
	if n := arrived(t, sock, macMember, macOutsider)[macOutsider]; n != 0 {
		t.Errorf("%d frames injected by the outsider %s reached %s's container", n, outsider.Addr, a.h.Name)
	}
	noPoison(t, a, macOutsider)
	if st := guardState(t, a.h); !st.Present || st.Port != fastdpPort || !slices.Equal(st.Allowed, []netip.Addr{b.h.Addr}) {
		t.Errorf("guard in %s: %+v; want port %d admitting only %s", a.h.Name, st, fastdpPort, b.h.Addr)
	}
	// The counter starts with the router; nothing but the injections was refused.
	if got := vxlanRefused(t, a); got < 3 {
		t.Errorf("weave_fastdp_refused_total is %v, want at least the 3 injected datagrams", got)
	}

	pingNoDup(t, a, b, 5)
	pingNoDup(t, b, a, 5)
	waitOverlay(t, a, b, "fastdp", "", 5*time.Second)
}

// TestHostileVXLANPasswordMesh: with a password there is no VXLAN device at all, status
// says the pairs are on the sleeve because of encryption, and VXLAN datagrams from an
// outsider or even from a member's underlay address reach nothing (a sleeve ping sent
// afterwards arrives); the guard counts them.
func TestHostileVXLANPasswordMesh(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireCommands(t, "ping")
	lab := netlab.New(t, netlab.Options{Hosts: 3})
	nodes := launchOn(t, lab.Hosts[:2], map[int][]int{1: {0}}, "--password", "hostile-vxlan-secret")
	a, b, outsider := nodes[0], nodes[1], lab.Hosts[2]
	for _, pair := range [][2]*dpNode{{a, b}, {b, a}} {
		c := waitOverlay(t, pair[0], pair[1], "sleeve", "encryption", 30*time.Second)
		if !strings.Contains(c.Info, "no VXLAN device") {
			t.Errorf("%s's status does not say why: %q", pair[0].h.Name, c.Info)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, n := range nodes {
		if out := mustRun(t, ctx, n.h, "ip", "-o", "link", "show", "type", "vxlan"); strings.TrimSpace(out) != "" {
			t.Errorf("%s has a VXLAN device with a password:\n%s", n.h.Name, out)
		}
	}
	pingOK(t, a, b.addr, 56)

	victimMAC := containerMAC(t, a)
	sock := netlab.PacketSocketT(t, a.c.Name, "ethwe", netlab.EtherTypeAll)
	inject(t, outsider, a, b.addr, victimMAC, macOutsider)
	inject(t, b.h, a, b.addr, victimMAC, macMember)
	// The control: b's container pings a's over the encrypted sleeve after the injections.
	if out, err := b.c.Run(ctx, "ping", "-c", "1", "-W", "5", a.addr.String()); err != nil {
		// Its request still reaches a's container; the reply fails when the injected ARP
		// poisoned a's cache, which the checks below report.
		t.Errorf("sleeve ping after the injection: %v\n%s", err, out)
	}
	counts := arrived(t, sock, containerMAC(t, b), macOutsider, macMember)
	for who, mac := range map[string][6]byte{"an outsider": macOutsider, "a member's underlay address": macMember} {
		if counts[mac] != 0 {
			t.Errorf("%d plaintext VXLAN frames from %s reached %s's container in a password mesh", counts[mac], who, a.h.Name)
		}
		noPoison(t, a, mac)
	}
	if got := vxlanRefused(t, a); got < 6 {
		t.Errorf("weave_fastdp_refused_total is %v, want at least the 6 injected datagrams", got)
	}
}

// TestHostileVXLANRestartDropsStaleAllowances: the guard follows the router's life. A
// fastdp peer is admitted; after kill -9 of our router and the peer's departure, the
// relaunched router admits nobody (a stale allowance would let the old address inject),
// a datagram from the old peer's address reaches nothing; a clean stop keeps the guard
// (the VXLAN device stays too); a relaunch with a password removes the device and keeps a
// guard that admits nobody; reset removes the table.
func TestHostileVXLANRestartDropsStaleAllowances(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireCommands(t, "ping")
	lab := netlab.New(t, netlab.Options{Hosts: 2})
	nodes := launchOn(t, lab.Hosts, map[int][]int{1: {0}})
	a, b := nodes[0], nodes[1]
	waitOverlay(t, a, b, "fastdp", "", 30*time.Second)
	if st := guardState(t, a.h); !slices.Equal(st.Allowed, []netip.Addr{b.h.Addr}) {
		t.Fatalf("guard in %s before the crash: %+v; want %s admitted", a.h.Name, st, b.h.Addr)
	}

	a.r.kill9(t)
	b.r.kill() // graceful stop: b leaves the mesh for good
	if st := guardState(t, a.h); !st.Present {
		t.Fatalf("kill -9 took the guard away (%+v): the VXLAN device it protects stays", st)
	}
	a.r.launch()
	if st := guardState(t, a.h); !st.Present || len(st.Allowed) != 0 {
		t.Fatalf("guard in %s after kill -9 and relaunch: %+v; want present and admitting nobody", a.h.Name, st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// The control path: the host itself on the overlay pings its container.
	if out, err := a.r.ctl(ctx, "expose", "10.32.1.254/12"); err != nil {
		t.Fatalf("expose: %v\n%s", err, out)
	}
	victimMAC := containerMAC(t, a)
	sock := netlab.PacketSocketT(t, a.c.Name, "ethwe", netlab.EtherTypeAll)
	inject(t, b.h, a, b.addr, victimMAC, macMember)
	if out, err := a.h.Run(ctx, "ping", "-c", "1", "-W", "5", a.addr.String()); err != nil {
		t.Fatalf("host -> container ping: %v\n%s", err, out)
	}
	bridgeMAC, err := bridgeHardwareAddr(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if n := arrived(t, sock, bridgeMAC, macMember)[macMember]; n != 0 {
		t.Errorf("%d frames from the departed peer's address reached the container after relaunch", n)
	}

	a.r.kill() // clean stop: the guard stays with the device
	if st := guardState(t, a.h); !st.Present {
		t.Fatal("a clean stop removed the guard while the VXLAN device stays")
	}
	// Relaunched with a password, the router removes the VXLAN device of the plaintext run
	// (its entries would still carry frames) and keeps a guard that admits nobody.
	if out := mustRun(t, ctx, a.h, "ip", "-o", "link", "show", "type", "vxlan"); strings.TrimSpace(out) == "" {
		t.Fatal("no VXLAN device after the plaintext run: the check below proves nothing")
	}
	a.r.launch("--password", "hostile-vxlan-secret")
	if out := mustRun(t, ctx, a.h, "ip", "-o", "link", "show", "type", "vxlan"); strings.TrimSpace(out) != "" {
		t.Errorf("the plaintext run's VXLAN device survived a relaunch with a password:\n%s", out)
	}
	if st := guardState(t, a.h); !st.Present || len(st.Allowed) != 0 {
		t.Errorf("guard with a password: %+v; want present and admitting nobody", st)
	}
	if out, err := a.r.ctl(ctx, "reset"); err != nil {
		t.Fatalf("reset: %v\n%s", err, out)
	}
	if st := guardState(t, a.h); st.Present {
		t.Fatalf("reset left the guard table: %+v", st)
	}
}

// bridgeHardwareAddr is the MAC of n's weave bridge (the source of the exposed host's frames).
func bridgeHardwareAddr(ctx context.Context, n *dpNode) ([6]byte, error) {
	out, err := n.h.Run(ctx, "cat", "/sys/class/net/"+api.DefaultBridge+"/address")
	if err != nil {
		return [6]byte{}, fmt.Errorf("bridge MAC: %v: %s", err, out)
	}
	hw, err := net.ParseMAC(strings.TrimSpace(string(out)))
	if err != nil || len(hw) != 6 {
		return [6]byte{}, fmt.Errorf("bridge MAC %q: %v", out, err)
	}
	return [6]byte(hw), nil
}

// TestHostileVXLANOVS: the same injections against routers with --datapath=ovs (userspace
// datapath, as the OVS tests run it here). OVS decapsulates only datagrams whose source is
// the remote_ip of one of our per-peer tunnel ports, and whatever reaches the host stack on
// the VXLAN port meets the guard. Without a password an outsider reaches nothing while a
// fastdp peer's frames (the control) do; with a password there is no OVS bridge of ours at
// all, and neither an outsider nor a member's address reaches anything.
func TestHostileVXLANOVS(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireCommands(t, "ovsdb-server", "ovsdb-tool", "ovs-vswitchd", "ovs-vsctl", "ethtool", "ping")
	for _, tc := range []struct {
		name     string
		password bool
	}{{"plaintext", false}, {"password", true}} {
		t.Run(tc.name, func(t *testing.T) {
			lab := netlab.New(t, netlab.Options{Hosts: 3})
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			schema := filepath.Join(testutil.RepoRoot(t), "fastdp", "ovs", "schema", "vswitch.ovsschema")
			var nodes []*dpNode
			var socks []string
			for i, h := range lab.Hosts[:2] {
				sock, err := h.StartOVS(ctx, schema)
				if err != nil {
					t.Fatal(err)
				}
				if err := h.OVSNetdevUnderlay(ctx, sock, ovsUnderlayBridge); err != nil {
					t.Fatal(err)
				}
				socks = append(socks, sock)
				nodes = append(nodes, &dpNode{h: h, r: newRouter(t, h), addr: containerAddr(i)})
			}
			dumpOnFailure(t, nodes[0].r, nodes[1].r)
			for i, n := range nodes {
				args := []string{"--datapath=ovs", "--ovs-datapath-type=netdev", "--ovs-socket", "unix:" + socks[i]}
				if tc.password {
					args = append(args, "--password", "hostile-ovs-secret")
				}
				if i == 1 {
					args = append(args, lab.Hosts[0].Addr.String())
				}
				n.r.launch(args...)
				n.attachContainer(ctx, t)
			}
			a, b, outsider := nodes[0], nodes[1], lab.Hosts[2]
			if tc.password {
				waitOverlay(t, a, b, "sleeve", "encryption", 30*time.Second)
				for i, n := range nodes {
					if brs, err := netlab.Vsctl(socks[i], "list-br"); err != nil || brs != ovsUnderlayBridge {
						t.Errorf("%s: OVS bridges with a password %q %v, want only the lab's %s (no %s)", n.h.Name, brs, err, ovsUnderlayBridge, ovs.DefaultBridge)
					}
				}
			} else {
				waitOverlay(t, a, b, "fastdp", "", 30*time.Second)
				waitOverlay(t, b, a, "fastdp", "", 10*time.Second)
			}
			pingOK(t, a, b.addr, 56)

			victimMAC := containerMAC(t, a)
			sock := netlab.PacketSocketT(t, a.c.Name, "ethwe", netlab.EtherTypeAll)
			inject(t, outsider, a, b.addr, victimMAC, macOutsider)
			stop, srcs := macMember, [][6]byte{macOutsider}
			if tc.password {
				inject(t, b.h, a, b.addr, victimMAC, macMember)
				if out, err := b.c.Run(ctx, "ping", "-c", "1", "-W", "5", a.addr.String()); err != nil {
					t.Errorf("sleeve ping after the injection: %v\n%s", err, out)
				}
				stop, srcs = containerMAC(t, b), append(srcs, macMember)
			} else {
				inject(t, b.h, a, unusedAddr, victimMAC, macMember)
			}
			counts := arrived(t, sock, stop, srcs...)
			for _, mac := range srcs {
				if counts[mac] != 0 {
					t.Errorf("%d frames injected with source MAC %x reached %s's container", counts[mac], mac, a.h.Name)
				}
				noPoison(t, a, mac)
			}
			// What OVS did not decapsulate went up the host stack to the VXLAN port, where
			// the guard dropped and counted it.
			if got := vxlanRefused(t, a); got < float64(3*len(srcs)) {
				t.Errorf("weave_fastdp_refused_total is %v, want at least the %d injected datagrams", got, 3*len(srcs))
			}
			pingNoDup(t, a, b, 3)
		})
	}
}
