package ovs

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weavemesh/weave/fastdp"
	"github.com/weavemesh/weave/internal/testutil"
)

// TestKernelAgainstOVSDB drives the fastdp.Kernel calls against a real ovsdb-server (no
// ovs-vswitchd: the rows are what is checked) with fake links.
func TestKernelAgainstOVSDB(t *testing.T) {
	sock := startOVSDB(t)
	// A tunnel left by an earlier run goes when the kernel path starts.
	old := newBackend(t, Config{Socket: sock, DatapathType: "netdev"})
	if err := old.EnsureBridge(); err != nil {
		t.Fatal(err)
	}
	if err := old.AddPeer("stale", netip.MustParseAddr("10.201.0.99")); err != nil {
		t.Fatal(err)
	}
	links := &FakeLinks{Bridges: []string{"weave"}}
	b, err := New(t.Context(), Config{Socket: sock, DatapathType: "netdev", Port: 7784, VNI: 77, Links: links})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewKernel(KernelConfig{Backend: b, Links: links, Bridge: "weave", MTU: 100}); err == nil {
		t.Fatal("NewKernel with MTU 100 succeeded")
	}
	b, err = New(t.Context(), Config{Socket: sock, DatapathType: "netdev", Port: 7784, VNI: 77, Links: links})
	if err != nil {
		t.Fatal(err)
	}
	k, err := NewKernel(KernelConfig{Backend: b, Links: links, Bridge: "weave", MTU: 1410, Isolate: []string{"vethwe-tap"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })

	if got, _ := vsctl(sock, "get", "Bridge", DefaultBridge, "other_config:forward-bpdu"); got != `"true"` {
		t.Errorf("forward-bpdu = %s, want \"true\" (heartbeats go to a reserved group address)", got)
	}
	ports, _ := vsctl(sock, "list-ports", DefaultBridge)
	if want := strings.Join([]string{HeartbeatOVS0, HeartbeatOVS1, UplinkOVS}, "\n"); ports != want {
		t.Fatalf("ports after NewKernel:\n%s\nwant:\n%s", ports, want)
	}
	for port, want := range map[string]string{UplinkOVS: "[]", HeartbeatOVS0: "[]", HeartbeatOVS1: "4094"} {
		if got, _ := vsctl(sock, "get", "Port", port, "tag"); got != want {
			t.Errorf("port %s tag %s, want %s", port, got, want)
		}
	}
	if got := links.Isolated(); !slices.Equal(got, []string{"vethwe-tap"}) {
		t.Errorf("isolated %v", got)
	}
	if k.MTU() != 1410 || k.HardwareAddr() == [6]byte{} {
		t.Errorf("MTU %d, MAC %x", k.MTU(), k.HardwareAddr())
	}

	tag := func(a netip.Addr) string {
		t.Helper()
		got, err := vsctl(sock, "get", "Port", PeerPort(a), "tag")
		if err != nil {
			return "gone"
		}
		return got
	}
	a, c := netip.MustParseAddr("10.201.0.2"), netip.MustParseAddr("::ffff:10.201.0.3")
	steps := []struct {
		what   string
		do     func() error
		a, c   string
		remote string
	}{
		{"heartbeat a", func() error { return k.SetHeartbeatRemote(a, true) }, "4094", "gone", ""},
		{"flood a", func() error { return k.SetFloodRemote(a, true) }, "[]", "gone", ""},
		{"flood a again", func() error { return k.SetFloodRemote(a, true) }, "[]", "gone", ""},
		{"heartbeat c (v4-mapped)", func() error { return k.SetHeartbeatRemote(c, true) }, "[]", "4094", `"10.201.0.3"`},
		{"unflood a", func() error { return k.SetFloodRemote(a, false) }, "4094", "4094", ""},
		{"no heartbeat a", func() error { return k.SetHeartbeatRemote(a, false) }, "gone", "4094", ""},
		{"flood-only a", func() error { return k.SetFloodRemote(a, true) }, "[]", "4094", ""},
		{"unflood a, no heartbeat", func() error { return k.SetFloodRemote(a, false) }, "gone", "4094", ""},
		{"no heartbeat c", func() error { return k.SetHeartbeatRemote(c, false) }, "gone", "gone", ""},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.what, err)
		}
		if ga, gc := tag(a), tag(c); ga != s.a || gc != s.c {
			t.Fatalf("after %s: tags a=%s c=%s, want %s %s", s.what, ga, gc, s.a, s.c)
		}
		if s.remote != "" {
			if got, _ := vsctl(sock, "get", "Interface", PeerPort(c), "options:remote_ip"); got != s.remote {
				t.Fatalf("after %s: remote_ip %s, want %s", s.what, got, s.remote)
			}
		}
	}
	// Counters: the sum over tunnel interfaces, those of removed ports kept.
	for _, x := range []netip.Addr{a, c} {
		if err := k.SetHeartbeatRemote(x, true); err != nil {
			t.Fatal(err)
		}
		if _, err := vsctl(sock, "set", "Interface", PeerPort(x), "statistics:rx_packets=10", "statistics:tx_bytes=1000", "statistics:tx_dropped=1"); err != nil {
			t.Fatal(err)
		}
	}
	want := fastdp.LinkStats{RxFrames: 20, TxBytes: 2000, TxDropped: 2}
	testutil.Eventually(t, 5*time.Second, "counters of two tunnels", func() error {
		if st, err := k.LinkStats(); err != nil || st != want {
			return fmt.Errorf("LinkStats %+v %v, want %+v", st, err, want)
		}
		return nil
	})
	if err := k.SetHeartbeatRemote(a, false); err != nil {
		t.Fatal(err)
	}
	if st, err := k.LinkStats(); err != nil || st != want {
		t.Errorf("LinkStats after a's port went: %+v %v, want %+v (kept)", st, err, want)
	}
	if err := k.SetHeartbeatRemote(c, false); err != nil {
		t.Fatal(err)
	}
	if out, _ := vsctl(sock, "--columns=name", "--bare", "list", "Port"); strings.Contains(out, TunnelName("stale")) {
		t.Errorf("stale tunnel of an earlier run still there:\n%s", out)
	}

	// Heartbeats go out through both ports and come in from either.
	frame := bytes.Repeat([]byte{0xab}, 60)
	if err := k.WriteFrame(frame); err != nil {
		t.Fatal(err)
	}
	for _, dev := range []string{HeartbeatHost0, HeartbeatHost1} {
		if w := links.Packet(dev).Written(); len(w) != 1 || !bytes.Equal(w[0], frame) {
			t.Errorf("%s: written %x", dev, w)
		}
	}
	links.Packet(HeartbeatHost1).Inject([]byte("from quarantine"))
	links.Packet(HeartbeatHost0).Inject([]byte("from active"))
	got := map[string]bool{}
	buf := make([]byte, 100)
	for range 2 {
		n, err := k.ReadFrame(buf)
		if err != nil {
			t.Fatal(err)
		}
		got[string(buf[:n])] = true
	}
	if !got["from quarantine"] || !got["from active"] {
		t.Errorf("read %v", got)
	}
	if err := k.FlushLearned(); err != nil || links.Flushes() != 1 {
		t.Errorf("FlushLearned: %v, %d flushes", err, links.Flushes())
	}

	// Close unblocks a reader and is idempotent; the configuration stays for Cleanup.
	readErr := make(chan error, 1)
	go func() {
		_, err := k.ReadFrame(buf)
		readErr <- err
	}()
	k.Close()
	k.Close()
	select {
	case err := <-readErr:
		if err == nil {
			t.Error("ReadFrame after Close returned no error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ReadFrame still blocked after Close")
	}
	if ports2, _ := vsctl(sock, "list-ports", DefaultBridge); ports2 != ports {
		t.Errorf("ports after Close %q, want them kept", ports2)
	}
	cl := newBackend(t, Config{Socket: sock, Links: links})
	if err := cl.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if d := links.Devices(); len(d) != 0 {
		t.Errorf("devices left after Cleanup: %v", d)
	}
	if brs, _ := vsctl(sock, "list-br"); brs != "" {
		t.Errorf("bridges left: %q", brs)
	}
}
