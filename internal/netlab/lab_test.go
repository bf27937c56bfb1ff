package netlab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/testutil"
)

// refusedWithin is how long a negative reachability check waits before it concludes that
// nothing got through. Every positive check with the same code passes in milliseconds.
const refusedWithin = 300 * time.Millisecond

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// serveTCP accepts connections on l and writes the peer's address to each, so the dialer
// learns which source address the server saw (the NAT test needs it).
func serveTCP(t *testing.T, ln net.Listener) {
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s\n", c.RemoteAddr())
			c.Close()
		}
	}()
}

// dialTCP connects from n to addr and returns what the server said.
func dialTCP(ctx context.Context, n interface {
	DialContext(context.Context, string, string) (net.Conn, error)
}, addr string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := n.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	b, err := io.ReadAll(c)
	return strings.TrimSpace(string(b)), err
}

// udpArrives sends a datagram from h to pc's address and reports whether pc got it in time.
func udpArrives(t *testing.T, from *Host, pc net.PacketConn, to string, within time.Duration) bool {
	t.Helper()
	c, err := from.DialContext(context.Background(), "udp", to)
	if err != nil {
		t.Fatalf("udp dial from %s: %v", from.Name, err)
	}
	defer c.Close()
	msg := fmt.Sprintf("probe-%d", time.Now().UnixNano())
	if _, err := c.Write([]byte(msg)); err != nil {
		return false
	}
	buf := make([]byte, 256)
	pc.SetReadDeadline(time.Now().Add(within))
	for {
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			return false
		}
		if string(buf[:n]) == msg {
			return true
		}
	}
}

func TestUnderlayPing(t *testing.T) {
	lab := New(t, Options{Hosts: 3})
	ctx := testCtx(t)
	if len(lab.Hosts) != 3 || lab.Hosts[2].Name != lab.Prefix+"-h3" || lab.Hosts[2].Addr != netip.MustParseAddr("10.201.0.3") {
		t.Fatalf("unexpected hosts: %+v", lab.Hosts)
	}
	for _, to := range lab.Hosts[1:] {
		loss, rtt, err := Ping(ctx, lab.Hosts[0], to.Addr, 3)
		if err != nil || loss != 0 || rtt <= 0 {
			t.Fatalf("ping %s -> %s: loss %v rtt %v err %v", lab.Hosts[0].Name, to.Addr, loss, rtt, err)
		}
	}
	// The lab's addresses exist only inside its namespaces.
	out, err := exec.Command("ip", "-o", "addr", "show").CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "10.201.0.") {
		t.Fatalf("underlay address leaked into the root namespace:\n%s", out)
	}
}

func TestFirewall(t *testing.T) {
	lab := New(t, Options{Hosts: 3})
	ctx := testCtx(t)
	h1, h2, h3 := lab.Hosts[0], lab.Hosts[1], lab.Hosts[2]
	ln, err := h2.Listen("tcp", ":7000")
	if err != nil {
		t.Fatal(err)
	}
	serveTCP(t, ln)
	pc, err := h2.ListenPacket("udp", ":7001")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	tcpAddr, udpAddr := h2.Addr.String()+":7000", h2.Addr.String()+":7001"

	if _, err := dialTCP(ctx, h1, tcpAddr, 5*time.Second); err != nil {
		t.Fatalf("tcp before firewall: %v", err)
	}
	if err := lab.Firewall(h1, h2); err != nil {
		t.Fatal(err)
	}
	if err := lab.Firewall(h1, h2); err != nil { // idempotent
		t.Fatal(err)
	}
	if _, err := dialTCP(ctx, h1, tcpAddr, refusedWithin); err == nil {
		t.Fatal("tcp h1 -> h2 got through the firewall")
	}
	if udpArrives(t, h1, pc, udpAddr, refusedWithin) {
		t.Fatal("udp h1 -> h2 got through the firewall")
	}
	// The other direction, and a third host that is not firewalled.
	ln1, err := h1.Listen("tcp", ":7000")
	if err != nil {
		t.Fatal(err)
	}
	serveTCP(t, ln1)
	if _, err := dialTCP(ctx, h2, h1.Addr.String()+":7000", refusedWithin); err == nil {
		t.Fatal("tcp h2 -> h1 got through the firewall")
	}
	if _, err := dialTCP(ctx, h3, tcpAddr, 5*time.Second); err != nil {
		t.Fatalf("tcp h3 -> h2 (not firewalled): %v", err)
	}
	if !udpArrives(t, h3, pc, udpAddr, 5*time.Second) {
		t.Fatal("udp h3 -> h2 (not firewalled) lost")
	}

	if err := lab.Unfirewall(h1, h2); err != nil {
		t.Fatal(err)
	}
	if _, err := dialTCP(ctx, h1, tcpAddr, 5*time.Second); err != nil {
		t.Fatalf("tcp after unfirewall: %v", err)
	}
	if !udpArrives(t, h1, pc, udpAddr, 5*time.Second) {
		t.Fatal("udp after unfirewall lost")
	}
}

func TestBlockUDPPort(t *testing.T) {
	lab := New(t, Options{Hosts: 2})
	h1, h2 := lab.Hosts[0], lab.Hosts[1]
	blocked, err := h2.ListenPacket("udp", ":6784")
	if err != nil {
		t.Fatal(err)
	}
	defer blocked.Close()
	open, err := h2.ListenPacket("udp", ":6783")
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	if err := lab.BlockUDPPort(h1, h2, 6784); err != nil {
		t.Fatal(err)
	}
	if !udpArrives(t, h1, open, h2.Addr.String()+":6783", 5*time.Second) {
		t.Fatal("udp to the other port lost")
	}
	if udpArrives(t, h1, blocked, h2.Addr.String()+":6784", refusedWithin) {
		t.Fatal("udp to the blocked port got through")
	}
	if err := lab.UnblockUDPPort(h1, h2, 6784); err != nil {
		t.Fatal(err)
	}
	if !udpArrives(t, h1, blocked, h2.Addr.String()+":6784", 5*time.Second) {
		t.Fatal("udp after unblock lost")
	}
}

func TestNAT(t *testing.T) {
	lab := New(t, Options{Hosts: 2, NAT: []int{1}})
	ctx := testCtx(t)
	pub, natted := lab.Hosts[0], lab.Hosts[1]
	if natted.NAT == "" || natted.Addr != netip.MustParseAddr("10.202.2.2") || natted.PublicAddr != netip.MustParseAddr("10.201.0.2") {
		t.Fatalf("unexpected NATed host %+v", natted)
	}
	ln, err := pub.Listen("tcp", ":7000")
	if err != nil {
		t.Fatal(err)
	}
	serveTCP(t, ln)
	seen, err := dialTCP(ctx, natted, pub.Addr.String()+":7000", 5*time.Second)
	if err != nil {
		t.Fatalf("NATed host cannot dial out: %v", err)
	}
	if ap, err := netip.ParseAddrPort(seen); err != nil || ap.Addr() != natted.PublicAddr {
		t.Fatalf("public host saw the connection from %q, want the NAT's address %s", seen, natted.PublicAddr)
	}
	if loss, _, err := Ping(ctx, natted, pub.Addr, 2); err != nil || loss != 0 {
		t.Fatalf("ping out through the NAT: loss %v err %v", loss, err)
	}

	// Nobody dials in: neither the private address nor the NAT's public one.
	lnIn, err := natted.Listen("tcp", ":7000")
	if err != nil {
		t.Fatal(err)
	}
	serveTCP(t, lnIn)
	for _, to := range []netip.Addr{natted.Addr, natted.PublicAddr} {
		if _, err := dialTCP(ctx, pub, to.String()+":7000", refusedWithin); err == nil {
			t.Fatalf("public host dialled the NATed host at %s", to)
		}
	}
	if loss, _, err := Ping(ctx, pub, natted.Addr, 2); err != nil || loss != 1 {
		t.Fatalf("ping in to the private address: loss %v err %v, want loss 1", loss, err)
	}
}

func TestSetMTU(t *testing.T) {
	lab := New(t, Options{Hosts: 2})
	ctx := testCtx(t)
	h1, h2 := lab.Hosts[0], lab.Hosts[1]
	df := func(from *Host, to netip.Addr, size int) float64 {
		t.Helper()
		r, err := PingWith(ctx, from, to, PingOptions{Count: 2, Size: size, DontFragment: true, Timeout: refusedWithin})
		if err != nil {
			t.Fatal(err)
		}
		return r.Loss
	}
	if loss := df(h1, h2.Addr, 1472); loss != 0 { // 1472 + 28 = 1500
		t.Fatalf("full-size DF ping at MTU 1500 lost %v", loss)
	}
	if err := lab.SetMTU(h1, 1400); err != nil {
		t.Fatal(err)
	}
	if loss := df(h1, h2.Addr, 1472); loss != 1 {
		t.Fatalf("1500-byte DF ping out of a 1400-MTU link: loss %v, want 1", loss)
	}
	if loss := df(h2, h1.Addr, 1472); loss != 1 {
		t.Fatalf("1500-byte DF ping into a 1400-MTU link: loss %v, want 1", loss)
	}
	if loss := df(h2, h1.Addr, 1372); loss != 0 {
		t.Fatalf("1400-byte DF ping: loss %v, want 0", loss)
	}

	// Options.MTU applies to every underlay link, the NAT's included.
	small := New(t, Options{Hosts: 2, MTU: 1400, NAT: []int{1}})
	pub, natted := small.Hosts[0], small.Hosts[1]
	if loss := df(natted, pub.Addr, 1372); loss != 0 {
		t.Fatalf("1400-byte DF ping through the NAT at MTU 1400: loss %v, want 0", loss)
	}
	if loss := df(natted, pub.Addr, 1472); loss != 1 {
		t.Fatalf("1500-byte DF ping through the NAT at MTU 1400: loss %v, want 1", loss)
	}

	// Behind a NAT, SetMTU lowers the NAT's uplink only: the NAT, a router, answers with ICMP
	// "fragmentation needed" and the host learns the path MTU, as on a real network.
	routed := New(t, Options{Hosts: 2, NAT: []int{1}})
	pub, natted = routed.Hosts[0], routed.Hosts[1]
	if err := routed.SetMTU(natted, 1400); err != nil {
		t.Fatal(err)
	}
	if loss := df(natted, pub.Addr, 1472); loss != 1 {
		t.Fatalf("1500-byte DF ping out of a NAT with a 1400-MTU uplink: loss %v, want 1", loss)
	}
	out, err := natted.Run(ctx, "ip", "route", "get", pub.Addr.String())
	if err != nil || !strings.Contains(string(out), "mtu 1400") {
		t.Fatalf("host behind the NAT did not learn the path MTU: %s %v", out, err)
	}
}

func TestDropPercent(t *testing.T) {
	lab := New(t, Options{Hosts: 2})
	ctx := testCtx(t)
	h1, h2 := lab.Hosts[0], lab.Hosts[1]
	if err := lab.DropPercent(h1, 100); err != nil {
		t.Fatal(err)
	}
	r, err := PingWith(ctx, h2, h1.Addr, PingOptions{Count: 3, Interval: 10 * time.Millisecond, Timeout: refusedWithin})
	if err != nil || r.Loss != 1 {
		t.Fatalf("100%% drop: %+v err %v", r, err)
	}
	// 50% each way loses a round trip with probability 0.75; with 200 pings the bounds below
	// are more than six standard deviations away.
	if err := lab.DropPercent(h1, 50); err != nil {
		t.Fatal(err)
	}
	r, err = PingWith(ctx, h2, h1.Addr, PingOptions{Count: 200, Interval: 2 * time.Millisecond, Timeout: refusedWithin})
	if err != nil || r.Loss < 0.55 || r.Loss > 0.93 {
		t.Fatalf("50%% drop each way: %+v err %v, want round-trip loss near 0.75", r, err)
	}
	if err := lab.DropPercent(h1, 0); err != nil {
		t.Fatal(err)
	}
	r, err = PingWith(ctx, h2, h1.Addr, PingOptions{Count: 20, Interval: 2 * time.Millisecond})
	if err != nil || r.Loss != 0 {
		t.Fatalf("after removing the drop: %+v err %v", r, err)
	}
}

func TestContainersAndProcesses(t *testing.T) {
	lab := New(t, Options{Hosts: 1})
	ctx := testCtx(t)
	h := lab.Hosts[0]
	c1, err := h.AddContainer("c1")
	if err != nil {
		t.Fatal(err)
	}
	c2, err := h.AddContainer("c2")
	if err != nil {
		t.Fatal(err)
	}
	if c1.Name != h.Name+"-c1" {
		t.Fatalf("container netns %q", c1.Name)
	}
	if _, err := h.AddContainer("Bad/Name"); err == nil {
		t.Fatal("bad container name accepted")
	}
	for i, c := range []*Container{c1, c2} {
		if err := h.AttachContainerToBridge(c, "br-test", netip.MustParsePrefix(fmt.Sprintf("10.99.0.%d/24", i+1))); err != nil {
			t.Fatal(err)
		}
	}
	if loss, _, err := Ping(ctx, c1, c2.Addr, 2); err != nil || loss != 0 {
		t.Fatalf("container to container over the bridge: loss %v err %v", loss, err)
	}

	p, err := c2.Start("echo", []string{"NETLAB_GREETING=hello"}, "sh", "-c", `echo "$NETLAB_GREETING $$"; exec sleep 1000`)
	if err != nil {
		t.Fatal(err)
	}
	// The greeting carries the shell's own PID: Proc.Pid is the command, not a wrapper.
	testutil.Eventually(t, 5*time.Second, "greeting in the log", func() error {
		if !strings.Contains(p.Log(), fmt.Sprintf("hello %d\n", p.Pid)) {
			return fmt.Errorf("log so far: %q", p.Log())
		}
		return nil
	})
	if !p.Running() {
		t.Fatal("process ended early")
	}
	if err := p.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if p.Running() {
		t.Fatal("process still running after Stop")
	}
	failing, err := h.Start("fail", nil, "sh", "-c", "exit 3")
	if err != nil {
		t.Fatal(err)
	}
	var exitErr *exec.ExitError
	if err := failing.Wait(); !errors.As(err, &exitErr) || exitErr.ExitCode() != 3 {
		t.Fatalf("Wait = %v, want exit status 3", err)
	}
	if err := failing.Stop(); !errors.As(err, &exitErr) {
		t.Fatalf("Stop of a process that failed by itself = %v, want its exit error", err)
	}
}

// TestCloseRemovesEverything builds a lab outside the test helper, leaves a process running in
// it, and checks that Close leaves nothing behind.
func TestCloseRemovesEverything(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := testCtx(t)
	lab, err := Build(ctx, Options{Hosts: 2, NAT: []int{1}})
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Close()
	c, err := lab.Hosts[1].AddContainer("c1")
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.Start("sleeper", nil, "sleep", "1000")
	if err != nil {
		t.Fatal(err)
	}
	dir := lab.Dir
	if err := lab.Close(); err != nil {
		t.Fatal(err)
	}
	if err := lab.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if p.Running() {
		t.Fatal("process survived Close")
	}
	if left := netnsWithPrefix(t, lab.Prefix); len(left) > 0 {
		t.Fatalf("namespaces left after Close: %v", left)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("lab dir %s left after Close: %v", dir, err)
	}
	if _, err := os.Stat(filepath.Join(stateRoot, lab.Prefix)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("owner record left after Close: %v", err)
	}
	if _, err := lab.Hosts[0].Start("late", nil, "true"); err == nil {
		t.Fatal("Start on a closed lab succeeded")
	}
}

// TestSweep fakes the leftovers of a crashed run (a namespace named for a dead PID, with a
// process still inside) and of a live one, and checks that Sweep removes only the first.
func TestSweep(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := testCtx(t)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	deadPrefix, err := newPrefix(dead.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	livePrefix, err := newPrefix(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	deadNS, liveNS := deadPrefix+"-h1", livePrefix+"-h1"
	for _, ns := range []string{deadNS, liveNS} {
		if _, err := runCmd(ctx, "ip", "netns", "add", ns); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { deleteNetns(ns) })
	}
	if err := os.MkdirAll(filepath.Join(stateRoot, deadPrefix), 0o755); err != nil {
		t.Fatal(err)
	}
	// The process a crashed run left running in its namespace.
	orphan := exec.Command("ip", "netns", "exec", deadNS, "sleep", "1000")
	if err := orphan.Start(); err != nil {
		t.Fatal(err)
	}
	orphanDone := make(chan error, 1)
	go func() { orphanDone <- orphan.Wait() }()
	t.Cleanup(func() { orphan.Process.Kill() })
	testutil.Eventually(t, 5*time.Second, "orphan inside its namespace", func() error {
		out, err := runCmd(ctx, "ip", "netns", "pids", deadNS)
		if err != nil || len(strings.TrimSpace(string(out))) == 0 {
			return fmt.Errorf("no pids in %s yet (%v)", deadNS, err)
		}
		return nil
	})

	if err := Sweep(PrefixRoot); err != nil {
		t.Fatal(err)
	}
	if left := netnsWithPrefix(t, deadPrefix); len(left) > 0 {
		t.Fatalf("Sweep left the dead run's namespaces: %v", left)
	}
	if _, err := os.Stat(filepath.Join(stateRoot, deadPrefix)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Sweep left the dead run's owner record: %v", err)
	}
	select {
	case <-orphanDone:
	case <-ctx.Done():
		t.Fatal("Sweep left the orphan process running")
	}
	if left := netnsWithPrefix(t, livePrefix); len(left) != 1 {
		t.Fatalf("Sweep touched a live run's namespace: left %v", left)
	}
}

func netnsWithPrefix(t *testing.T, prefix string) []string {
	t.Helper()
	entries, err := os.ReadDir(netnsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			names = append(names, e.Name())
		}
	}
	return names
}

// TestCleanupOnFailureAndPanic runs this test binary again with a lab in a test that fails or
// panics, and checks that the lab is gone afterwards.
func TestCleanupOnFailureAndPanic(t *testing.T) {
	if how := os.Getenv("NETLAB_CHILD"); how != "" {
		lab := New(t, Options{Hosts: 2, NAT: []int{1}})
		if _, err := lab.Hosts[0].Start("sleeper", nil, "sleep", "1000"); err != nil {
			t.Fatal(err)
		}
		fmt.Printf("PREFIX=%s\n", lab.Prefix)
		if how == "panic" {
			panic("child panics on purpose")
		}
		t.Fatal("child fails on purpose")
	}
	testutil.RequireRoot(t)
	for _, how := range []string{"fail", "panic"} {
		t.Run(how, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestCleanupOnFailureAndPanic$", "-test.count=1")
			cmd.Env = append(os.Environ(), "NETLAB_CHILD="+how)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("child did not fail:\n%s", out)
			}
			_, rest, ok := strings.Cut(string(out), "PREFIX=")
			if !ok {
				t.Fatalf("child printed no prefix:\n%s", out)
			}
			prefix, _, _ := strings.Cut(rest, "\n")
			if left := netnsWithPrefix(t, prefix); len(left) > 0 {
				t.Fatalf("namespaces left after the child's %s: %v\n%s", how, left, out)
			}
		})
	}
}

// TestSweepRecycledPID: an owner record whose PID now belongs to another process (a different
// start time) marks an abandoned lab.
func TestSweepRecycledPID(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := testCtx(t)
	prefix, err := newPrefix(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	ns := prefix + "-h1"
	if _, err := runCmd(ctx, "ip", "netns", "add", ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteNetns(ns) })
	dir := filepath.Join(stateRoot, prefix)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	rec := fmt.Sprintf("pid=%d start=1 dir=/nonexistent\n", os.Getpid())
	if err := os.WriteFile(filepath.Join(dir, "owner"), []byte(rec), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Sweep(PrefixRoot); err != nil {
		t.Fatal(err)
	}
	if left := netnsWithPrefix(t, prefix); len(left) > 0 {
		t.Fatalf("Sweep kept a lab whose owner PID was recycled: %v", left)
	}
}
