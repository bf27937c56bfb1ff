package fastdp

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/weavemesh/weave/internal/netlab"
	"github.com/weavemesh/weave/internal/testutil"
	"github.com/weavemesh/weave/mesh"
)

// labTiming: fast enough for a test, slow enough for a loaded 2-core machine.
var labTiming = Timing{Interval: 100 * time.Millisecond, DownAfter: 800 * time.Millisecond,
	RecoverAfter: 500 * time.Millisecond, MaxHoldoff: 2 * time.Second, StableAfter: time.Minute}

type labNode struct {
	h    *netlab.Host
	name mesh.PeerName
	f    *FastDP
	c    *netlab.Container
}

func vxlanLink(t *testing.T, ns, dev string) (netlink.Link, error) {
	t.Helper()
	nsh, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	return h.LinkByName(dev)
}

func startLabNode(t *testing.T, m *fakeMesh, h *netlab.Host, isolate ...string) *FastDP {
	t.Helper()
	return startLabNodeAt(t, m, h, h.Addr, isolate...)
}

func startLabNodeAt(t *testing.T, m *fakeMesh, h *netlab.Host, local netip.Addr, isolate ...string) *FastDP {
	t.Helper()
	name := mesh.PeerName(0x0200000000 + uint64(h.Index+1))
	f, err := New(Config{Name: name, Bridge: "weave", Netns: h.Netns(), LocalAddr: local, VNI: VNIFor("lab"),
		Isolate: isolate, Timing: labTiming, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("fastdp on %s: %v", h.Name, err)
	}
	t.Cleanup(func() { f.Close() })
	m.mu.Lock()
	m.nodes[name] = f
	m.mu.Unlock()
	return f
}

func labStatus(f *FastDP, peer mesh.PeerName, state State, reason Reason) func() error {
	return func() error {
		s, ok := f.Status(peer)
		if !ok {
			return fmt.Errorf("no status for %s", peer)
		}
		if s.State != state || s.Reason != reason {
			return fmt.Errorf("state %s reason %q (%s)", s.State, s.Reason, s.Detail)
		}
		return nil
	}
}

// Two hosts, a bridge and a container on each, nothing in userspace between them: the
// containers reach each other only if the kernel VXLAN path works. Heartbeats go healthy,
// fail when UDP 6784 is blocked, and return after the hold-off when it is unblocked.
func TestKernelPathInNetns(t *testing.T) {
	testutil.RequireRoot(t)
	lab := netlab.New(t, netlab.Options{Hosts: 2})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m := &fakeMesh{nodes: map[mesh.PeerName]*FastDP{}}
	nodes := make([]*labNode, 2)
	for i, h := range lab.Hosts {
		if err := h.EnsureBridge(ctx, "weave"); err != nil {
			t.Fatal(err)
		}
		// A stand-in for the router's TAP on the bridge: it must be isolated from VXLAN.
		for _, argv := range [][]string{
			{"ip", "link", "add", "tapx", "type", "veth", "peer", "name", "tapy"},
			{"ip", "link", "set", "tapx", "master", "weave", "up"},
		} {
			if out, err := lab.RunIn(ctx, h.Netns(), argv...); err != nil {
				t.Fatalf("%v: %v %s", argv, err, out)
			}
		}
		n := &labNode{h: h, name: mesh.PeerName(0x0200000000 + uint64(i+1))}
		n.f = startLabNode(t, m, h, "tapx")
		if got := n.f.MTU(); got != 1450 {
			t.Fatalf("MTU %d from a 1500 underlay, want 1450", got)
		}
		for dev, want := range map[string]string{"vxlan-6784": "isolated on", "tapx": "isolated on"} {
			if out, err := lab.RunIn(ctx, h.Netns(), "bridge", "-d", "link", "show", "dev", dev); err != nil || !strings.Contains(string(out), want) {
				t.Fatalf("%s on %s: want %q in %s (%v)", dev, h.Name, want, out, err)
			}
		}
		out, err := lab.RunIn(ctx, h.Netns(), "ip", "-d", "link", "show", "dev", "vxlan-6784")
		if err != nil || !strings.Contains(string(out), "df set") || !strings.Contains(string(out), "nolearning") {
			t.Fatalf("vxlan device: want df set and nolearning in %s (%v)", out, err)
		}
		c, err := h.AddContainer("c")
		if err != nil {
			t.Fatal(err)
		}
		if err := h.AttachContainerToBridge(c, "weave", netip.MustParsePrefix(fmt.Sprintf("10.40.0.%d/24", i+1))); err != nil {
			t.Fatal(err)
		}
		n.c = c
		nodes[i] = n
	}
	a, b := nodes[0], nodes[1]
	for _, e := range [][2]*labNode{{a, b}, {b, a}} {
		if err := e[0].f.AddPeer(Peer{Name: e[1].name, ConnID: 1, Addr: e[1].h.Addr, LocalAddr: e[0].h.Addr,
			Feature: e[0].f.Features()[FeatureKey]}); err != nil {
			t.Fatal(err)
		}
	}
	a.f.Start(meshEnd{m, a.name})
	b.f.Start(meshEnd{m, b.name})

	up := time.Now()
	testutil.Eventually(t, 5*time.Second, "a: b healthy", labStatus(a.f, b.name, StateHealthy, ReasonNone))
	testutil.Eventually(t, 5*time.Second, "b: a healthy", labStatus(b.f, a.name, StateHealthy, ReasonNone))
	t.Logf("healthy after %v", time.Since(up))

	fdb := func() string {
		out, err := lab.RunIn(ctx, a.h.Netns(), "bridge", "fdb", "show", "dev", "vxlan-6784")
		if err != nil {
			t.Fatalf("bridge fdb: %v %s", err, out)
		}
		return string(out)
	}
	a.f.Learn(net.HardwareAddr{0x02, 0xaa, 0, 0, 0, 2}, b.name)
	for _, want := range []string{"00:00:00:00:00:00 dst 10.201.0.2", "01:80:c2:00:00:0e dst 10.201.0.2", "02:aa:00:00:00:02 dst 10.201.0.2"} {
		if got := fdb(); !strings.Contains(got, want) {
			t.Fatalf("fdb of a healthy pair lacks %q:\n%s", want, got)
		}
	}

	before, err := vxlanLink(t, a.h.Name, "vxlan-6784")
	if err != nil {
		t.Fatal(err)
	}
	kaBefore, kbBefore := a.f.Stats().Kernel, b.f.Stats().Kernel
	ping := func(want float64) func() error {
		return func() error {
			r, err := netlab.PingWith(ctx, a.c, b.c.Addr, netlab.PingOptions{Count: 3, Interval: 20 * time.Millisecond, Timeout: 500 * time.Millisecond})
			if err != nil {
				return err
			}
			if r.Loss != want {
				return fmt.Errorf("loss %.2f, want %.2f", r.Loss, want)
			}
			return nil
		}
	}
	testutil.Eventually(t, 5*time.Second, "containers ping through the kernel path", ping(0))
	// A full-size packet (1450-byte IP) crosses with DF set: the MTU is right end to end.
	r, err := netlab.PingWith(ctx, a.c, b.c.Addr, netlab.PingOptions{Count: 2, Size: 1450 - 28, DontFragment: true})
	if err != nil || r.Loss != 0 {
		t.Fatalf("full-size ping: %+v, %v", r, err)
	}
	after, err := vxlanLink(t, a.h.Name, "vxlan-6784")
	if err != nil {
		t.Fatal(err)
	}
	// The pings are in fastdp's counters: they come from the kernel, not from us.
	ka, kb := a.f.Stats(), b.f.Stats()
	if !ka.KernelCounted || ka.Kernel.TxFrames-kaBefore.TxFrames < 5 || ka.Kernel.TxBytes-kaBefore.TxBytes < 2*1450 ||
		kb.Kernel.RxFrames-kbBefore.RxFrames < 5 {
		t.Fatalf("kernel counters: a %+v (before %+v), b %+v (before %+v); want the pings", ka.Kernel, kaBefore, kb.Kernel, kbBefore)
	}

	// The router says b's container MAC is behind a peer that is not on fastdp: the kernel
	// must drop frames to it (sleeve carries them) rather than flood them; back to b, the
	// unicast entry carries them again.
	out, err := lab.RunIn(ctx, b.c.Netns(), "ip", "-o", "link", "show", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(out[strings.Index(string(out), "link/ether"):]))
	bMAC, err := net.ParseMAC(f[1])
	if err != nil {
		t.Fatalf("container MAC in %q: %v", out, err)
	}
	a.f.Learn(bMAC, mesh.PeerName(0x99))
	if err := ping(1)(); err != nil {
		t.Fatalf("ping to a MAC with a drop entry: %v\n%s", err, fdb())
	}
	if d := a.f.Stats().Kernel.TxDropped - ka.Kernel.TxDropped; d == 0 {
		t.Fatal("frames to a drop entry are not counted as dropped out")
	}
	a.f.Learn(bMAC, b.name)
	if !strings.Contains(fdb(), bMAC.String()+" dst 10.201.0.2") {
		t.Fatalf("no unicast entry for %s:\n%s", bMAC, fdb())
	}
	if err := ping(0)(); err != nil {
		t.Fatalf("ping through the unicast entry: %v", err)
	}
	if d := after.Attrs().Statistics.TxPackets - before.Attrs().Statistics.TxPackets; d < 5 {
		t.Fatalf("the VXLAN device sent %d packets during the pings, want them all through it", d)
	}

	// Block the VXLAN port: both ends fall back with the reason, and the containers lose
	// each other (nothing else carries frames in this test).
	if err := lab.BlockUDPPort(a.h, b.h, 6784); err != nil {
		t.Fatal(err)
	}
	blocked := time.Now()
	testutil.Eventually(t, 5*time.Second, "a: b blocked", labStatus(a.f, b.name, StateUnhealthy, ReasonUDPBlocked))
	testutil.Eventually(t, 5*time.Second, "b: a blocked", labStatus(b.f, a.name, StateUnhealthy, ReasonUDPBlocked))
	t.Logf("unhealthy %v after the block", time.Since(blocked))
	if a.f.Active(b.name) || b.f.Active(a.name) {
		t.Fatal("blocked pair still active")
	}
	// Only the heartbeat entry still points at b; its MACs have drop entries.
	got := fdb()
	if strings.Count(got, "dst 10.201.0.2") != 1 || !strings.Contains(got, "01:80:c2:00:00:0e dst 10.201.0.2") ||
		strings.Contains(got, "00:00:00:00:00:00") || !strings.Contains(got, "02:aa:00:00:00:02 dst 0.0.0.0") {
		t.Fatalf("fdb of an unhealthy pair: want the heartbeat entry and drop entries:\n%s", got)
	}
	s, _ := a.f.Status(b.name)
	t.Logf("status while blocked: %s", s.Detail)
	if err := ping(1)(); err != nil {
		t.Fatalf("ping while blocked: %v", err)
	}

	if err := lab.UnblockUDPPort(a.h, b.h, 6784); err != nil {
		t.Fatal(err)
	}
	unblocked := time.Now()
	testutil.Eventually(t, 10*time.Second, "a: b healthy again", labStatus(a.f, b.name, StateHealthy, ReasonNone))
	testutil.Eventually(t, 10*time.Second, "b: a healthy again", labStatus(b.f, a.name, StateHealthy, ReasonNone))
	if d := time.Since(unblocked); d < 2*labTiming.RecoverAfter {
		t.Fatalf("healthy %v after the unblock, before the hold-off", d)
	}
	t.Logf("healthy again %v after the unblock", time.Since(unblocked))
	testutil.Eventually(t, 5*time.Second, "containers ping again", ping(0))

	// Close keeps the device (and with it the kernel path); a new FastDP adopts it.
	if err := a.f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := vxlanLink(t, a.h.Name, "vxlan-6784"); err != nil {
		t.Fatalf("Close removed the device: %v", err)
	}
	if err := ping(0)(); err != nil {
		t.Fatalf("kernel path after Close: %v", err)
	}
	if st := a.f.Stats(); !st.KernelCounted || st.Kernel.TxFrames < ka.Kernel.TxFrames {
		t.Fatalf("kernel counters after Close %+v, want the last ones read", st.Kernel)
	}
	again, err := New(Config{Name: a.name, Bridge: "weave", Netns: a.h.Netns(), LocalAddr: a.h.Addr, VNI: VNIFor("lab"),
		Timing: labTiming, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("adopt: %v", err)
	}
	again.Close()
	after2, err := vxlanLink(t, a.h.Name, "vxlan-6784")
	if err != nil || after2.Attrs().Index != after.Attrs().Index {
		t.Fatalf("device not adopted: %v", err)
	}

	// Cleanup removes it and leaves nothing; a second Cleanup is fine.
	for i := 0; i < 2; i++ {
		if err := Cleanup(a.h.Netns(), "vxlan-6784"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := vxlanLink(t, a.h.Name, "vxlan-6784"); err == nil {
		t.Fatal("device still there after Cleanup")
	}
	out, err = lab.RunIn(ctx, a.h.Netns(), "bridge", "fdb", "show", "dev", "vxlan-6784")
	if err == nil {
		t.Fatalf("fdb of the removed device still listed: %s", out)
	}
}

// With the underlay MTU below what VXLAN needs, small heartbeats pass and full-size ones
// do not (DF is set): the pair stays on sleeve with the reason "mtu".
func TestKernelPathMTUInNetns(t *testing.T) {
	testutil.RequireRoot(t)
	lab := netlab.New(t, netlab.Options{Hosts: 2})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m := &fakeMesh{nodes: map[mesh.PeerName]*FastDP{}}
	var fs []*FastDP
	for i, h := range lab.Hosts {
		if err := h.EnsureBridge(ctx, "weave"); err != nil {
			t.Fatal(err)
		}
		// The second host gives no local address: its MTU comes from its one underlay link
		// (the lab has no default route), and the kernel picks the source address.
		local := h.Addr
		if i == 1 {
			local = netip.Addr{}
		}
		f := startLabNodeAt(t, m, h, local)
		if f.MTU() != 1450 {
			t.Fatalf("host %d: MTU %d, want 1450 from the 1500 underlay", i, f.MTU())
		}
		fs = append(fs, f)
	}
	// Both VXLAN devices derived 1450 from 1500; now the path only carries 1400.
	for _, h := range lab.Hosts {
		if err := lab.SetMTU(h, 1400); err != nil {
			t.Fatal(err)
		}
	}
	names := []mesh.PeerName{0x0200000001, 0x0200000002}
	for i := range fs {
		o := 1 - i
		if err := fs[i].AddPeer(Peer{Name: names[o], ConnID: 1, Addr: lab.Hosts[o].Addr, LocalAddr: lab.Hosts[i].Addr,
			Feature: fs[i].Features()[FeatureKey]}); err != nil {
			t.Fatal(err)
		}
		fs[i].Start(meshEnd{m, names[i]})
	}
	testutil.Eventually(t, 5*time.Second, "mtu reason", labStatus(fs[0], names[1], StateUnhealthy, ReasonMTU))
	s, _ := fs[0].Status(names[1])
	t.Logf("status: %s", s.Detail)
}

// testEtherType marks the broadcast frames of TestBroadcastOncePerFastdpPeer.
const testEtherType = 0x88b6

// packetSocket opens an AF_PACKET socket for testEtherType on link in namespace ns.
func packetSocket(t *testing.T, ns, link string) *os.File {
	return netlab.PacketSocketT(t, ns, link, testEtherType)
}

// countFrames counts the frames that arrive on s until it stays quiet (a packet socket of
// one EtherType never sees its own sends).
func countFrames(t *testing.T, s *os.File) int { return netlab.CountFramesT(t, s) }

// Broadcasts from a container reach every fastdp peer's containers exactly once through
// the kernel, never a peer whose pair is unhealthy, and never the router's port of a
// remote bridge (port isolation), while the local router's port does see them.
func TestBroadcastOncePerFastdpPeerInNetns(t *testing.T) {
	testutil.RequireRoot(t)
	lab := netlab.New(t, netlab.Options{Hosts: 3})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m := &fakeMesh{nodes: map[mesh.PeerName]*FastDP{}}
	var fs []*FastDP
	var names []mesh.PeerName
	var cs []*netlab.Container
	for i, h := range lab.Hosts {
		if err := h.EnsureBridge(ctx, "weave"); err != nil {
			t.Fatal(err)
		}
		for _, argv := range [][]string{
			{"ip", "link", "add", "tapx", "type", "veth", "peer", "name", "tapy"},
			{"ip", "link", "set", "tapx", "master", "weave", "up"},
			{"ip", "link", "set", "tapy", "up"},
		} {
			if out, err := lab.RunIn(ctx, h.Netns(), argv...); err != nil {
				t.Fatalf("%v: %v %s", argv, err, out)
			}
		}
		fs = append(fs, startLabNode(t, m, h, "tapx"))
		names = append(names, mesh.PeerName(0x0200000000+uint64(i+1)))
		c, err := h.AddContainer("c")
		if err != nil {
			t.Fatal(err)
		}
		if err := h.AttachContainerToBridge(c, "weave", netip.MustParsePrefix(fmt.Sprintf("10.40.0.%d/24", i+1))); err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	for i := range fs {
		for j := range fs {
			if i != j {
				if err := fs[i].AddPeer(Peer{Name: names[j], ConnID: uint64(10*min(i, j) + max(i, j)), Addr: lab.Hosts[j].Addr,
					LocalAddr: lab.Hosts[i].Addr, Feature: fs[i].Features()[FeatureKey]}); err != nil {
					t.Fatal(err)
				}
			}
		}
		fs[i].Start(meshEnd{m, names[i]})
	}
	for i := range fs {
		for j := range fs {
			if i != j {
				testutil.Eventually(t, 5*time.Second, fmt.Sprintf("%d sees %d healthy", i, j), labStatus(fs[i], names[j], StateHealthy, ReasonNone))
			}
		}
	}

	send := packetSocket(t, cs[0].Netns(), "eth0")
	rx := map[string]*os.File{
		"c2": packetSocket(t, cs[1].Netns(), "eth0"), "c3": packetSocket(t, cs[2].Netns(), "eth0"),
		"h1 router port": packetSocket(t, lab.Hosts[0].Netns(), "tapy"),
		"h2 router port": packetSocket(t, lab.Hosts[1].Netns(), "tapy"),
		"h3 router port": packetSocket(t, lab.Hosts[2].Netns(), "tapy"),
	}
	const n = 20
	burst := func() map[string]int {
		frame := make([]byte, 60)
		copy(frame, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0xc1, 0, 0, 0, 1, testEtherType >> 8, testEtherType & 0xff})
		for i := 0; i < n; i++ {
			frame[20] = byte(i)
			if _, err := send.Write(frame); err != nil {
				t.Fatal(err)
			}
		}
		got := map[string]int{}
		for name, s := range rx {
			got[name] = countFrames(t, s)
		}
		return got
	}
	want := map[string]int{"c2": n, "c3": n, "h1 router port": n, "h2 router port": 0, "h3 router port": 0}
	if got := burst(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("broadcast frames received %v, want %v", got, want)
	}

	// h1-h3 loses UDP 6784: h3 gets nothing more through the kernel (sleeve would carry
	// it), h2 still exactly one copy.
	if err := lab.BlockUDPPort(lab.Hosts[0], lab.Hosts[2], 6784); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "h1 sees h3 unhealthy", labStatus(fs[0], names[2], StateUnhealthy, ReasonUDPBlocked))
	want["c3"] = 0
	if got := burst(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("with h1-h3 unhealthy, broadcast frames received %v, want %v", got, want)
	}
}
