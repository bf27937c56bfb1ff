package ovs

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/netlab"
	"github.com/weavemesh/weave/internal/testutil"
)

// schemaFile is the committed schema the vswitch model was generated from.
const schemaFile = "schema/vswitch.ovsschema"

// vsctl runs ovs-vsctl against sock without waiting for ovs-vswitchd.
func vsctl(sock string, args ...string) (string, error) { return netlab.Vsctl(sock, args...) }

// startOVSDB runs a private ovsdb-server (no ovs-vswitchd: the database alone) as a child
// of the test; enough to check every transaction we send, without root.
func startOVSDB(t *testing.T) string {
	t.Helper()
	testutil.RequireCommands(t, "ovsdb-server", "ovsdb-tool", "ovs-vsctl")
	dir, err := os.MkdirTemp("", "wovs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	argv, sock, err := netlab.OVSDBCommand(t.Context(), dir, schemaFile)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), netlab.OVSEnv(dir)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start ovsdb-server: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	if err := netlab.InitOVSDB(t.Context(), sock); err != nil {
		t.Fatal(err)
	}
	return sock
}

func newBackend(t *testing.T, cfg Config) *Backend {
	t.Helper()
	b, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func TestBackendAgainstOVSDB(t *testing.T) {
	sock := startOVSDB(t)
	// Someone else's bridge with a port: it must survive everything we do.
	if _, err := vsctl(sock, "add-br", "theirs", "--", "add-port", "theirs", "theirport"); err != nil {
		t.Fatal(err)
	}
	b := newBackend(t, Config{Socket: sock, Bridge: "weave-ovs", DatapathType: "netdev", Port: 7784, VNI: 4242})
	for range 2 { // idempotent
		if err := b.EnsureBridge(); err != nil {
			t.Fatal(err)
		}
	}
	peer1, peer2 := "aa:bb:cc:dd:ee:01", "some peer"
	if err := b.AddPeer(peer1, netip.MustParseAddr("10.201.0.2")); err != nil {
		t.Fatal(err)
	}
	if err := b.AddPeer(peer2, netip.MustParseAddr("10.201.0.3")); err != nil {
		t.Fatal(err)
	}
	// Retarget: same port, new remote.
	if err := b.AddPeer(peer1, netip.MustParseAddr("10.201.0.9")); err != nil {
		t.Fatal(err)
	}
	if err := b.AddLocalPort("vethwe-ovs", false); err != nil {
		t.Fatal(err)
	}

	// What ovs-vsctl (the reference client) sees.
	ports, err := vsctl(sock, "list-ports", "weave-ovs")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"vethwe-ovs", "wvxaabbccddee01", TunnelName(peer2)}
	slices.Sort(want)
	if want := strings.Join(want, "\n"); ports != want {
		t.Fatalf("ports of weave-ovs:\n%s\nwant:\n%s", ports, want)
	}
	for col, want := range map[string]string{
		"type":         "vxlan",
		"options":      `{dst_port="7784", key="4242", remote_ip="10.201.0.9"}`,
		"external_ids": `{weave-owner=weave, weave-peer="aa:bb:cc:dd:ee:01", weave-role=tunnel}`,
	} {
		got, err := vsctl(sock, "get", "Interface", "wvxaabbccddee01", col)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("Interface %s: %s, want %s", col, got, want)
		}
	}
	if got, _ := vsctl(sock, "get", "Port", "wvxaabbccddee01", "protected"); got != "true" {
		t.Errorf("tunnel port protected = %q, want true (split horizon between peers)", got)
	}
	if got, _ := vsctl(sock, "get", "Port", "vethwe-ovs", "protected"); got != "false" {
		t.Errorf("local port protected = %q, want false", got)
	}
	if got, _ := vsctl(sock, "get", "Bridge", "weave-ovs", "datapath_type"); got != "netdev" {
		t.Errorf("datapath_type = %q", got)
	}
	peers := b.Peers()
	if len(peers) != 2 || peers[peer1] != netip.MustParseAddr("10.201.0.9") || peers[peer2] != netip.MustParseAddr("10.201.0.3") {
		t.Errorf("Peers() = %v", peers)
	}

	if err := b.RemovePeer(peer2); err != nil {
		t.Fatal(err)
	}
	if err := b.RemovePeer(peer2); err != nil { // gone already: fine
		t.Fatal(err)
	}
	if out, _ := vsctl(sock, "--columns=name", "--bare", "list", "Interface"); strings.Contains(out, TunnelName(peer2)) {
		t.Errorf("interface of removed peer still in the database:\n%s", out)
	}

	// Quarantine and back.
	if err := b.SetPeerActive(peer1, false); err != nil {
		t.Fatal(err)
	}
	if got, _ := vsctl(sock, "get", "Port", "wvxaabbccddee01", "tag"); got != "4094" {
		t.Errorf("inactive peer's port tag = %q, want 4094", got)
	}
	if got, _ := vsctl(sock, "get", "Port", "wvxaabbccddee01", "trunks"); got != "[]" {
		t.Errorf("inactive peer's port trunks = %q, want [] (an access port)", got)
	}
	if exists, active := b.PeerActive(peer1); !exists || active {
		t.Errorf("PeerActive after deactivation = %v, %v", exists, active)
	}
	if err := b.SetPeerActive(peer1, true); err != nil {
		t.Fatal(err)
	}
	if got, _ := vsctl(sock, "get", "Port", "wvxaabbccddee01", "tag"); got != "[]" {
		t.Errorf("active peer's port tag = %q, want []", got)
	}
	if exists, active := b.PeerActive(peer1); !exists || !active {
		t.Errorf("PeerActive after activation = %v, %v", exists, active)
	}
	if err := b.SetPeerActive("no such peer", true); err == nil {
		t.Error("SetPeerActive of an unknown peer succeeded")
	}
	for _, port := range []string{"vethwe-ovs", "wvxaabbccddee01", "weave-ovs"} {
		if got, _ := vsctl(sock, "get", "Port", port, "trunks"); got != "[0]" {
			t.Errorf("port %s trunks = %q, want [0] (untagged only: quarantined frames never leak tagged)", port, got)
		}
	}

	// A second backend of another owner refuses our bridge and cannot touch our ports.
	other := newBackend(t, Config{Socket: sock, Bridge: "weave-ovs", Owner: "intruder"})
	if err := other.EnsureBridge(); !errors.Is(err, ErrNotOurs) {
		t.Errorf("EnsureBridge of another owner: %v, want ErrNotOurs", err)
	}
	if err := other.RemovePeer(peer1); !errors.Is(err, ErrNotOurs) {
		t.Errorf("RemovePeer of another owner: %v, want ErrNotOurs", err)
	}
	theirs := newBackend(t, Config{Socket: sock, Bridge: "theirs"})
	if err := theirs.EnsureBridge(); !errors.Is(err, ErrNotOurs) {
		t.Errorf("EnsureBridge on an existing foreign bridge: %v, want ErrNotOurs", err)
	}

	for range 2 {
		if err := b.Cleanup(); err != nil {
			t.Fatal(err)
		}
	}
	if brs, _ := vsctl(sock, "list-br"); brs != "theirs" {
		t.Errorf("bridges after cleanup: %q, want only theirs", brs)
	}
	for _, table := range []string{"Port", "Interface"} {
		out, err := vsctl(sock, "--columns=name", "--bare", "list", table)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Fields(out); strings.Join(got, " ") != "theirport theirs" && strings.Join(got, " ") != "theirs theirport" {
			t.Errorf("%s rows after cleanup: %v, want only theirs and theirport", table, got)
		}
	}
	if len(b.Peers()) != 0 {
		t.Errorf("Peers() after cleanup: %v", b.Peers())
	}
}

func TestAddPortNeedsOurBridge(t *testing.T) {
	sock := startOVSDB(t)
	b := newBackend(t, Config{Socket: sock})
	if err := b.AddPeer("aa:aa:aa:aa:aa:aa", netip.MustParseAddr("192.0.2.1")); err == nil {
		t.Fatal("AddPeer without a bridge succeeded")
	}
	if err := b.EnsureBridge(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []netip.Addr{{}, netip.IPv4Unspecified(), netip.MustParseAddr("224.0.0.1")} {
		if err := b.AddPeer("p", bad); err == nil {
			t.Errorf("AddPeer(%v) succeeded", bad)
		}
	}
	for _, bad := range []string{"", "wvx000000000000", "weave-ovs", "name-that-is-far-too-long", "a b"} {
		if err := b.AddLocalPort(bad, false); err == nil {
			t.Errorf("AddLocalPort(%q) succeeded", bad)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.AddPeer("p", netip.MustParseAddr("192.0.2.1")); err == nil {
		t.Error("AddPeer after Close succeeded")
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{Bridge: "this-name-is-too-long"},
		{Port: 70000},
		{VNI: 1 << 24},
		{DatapathType: "dpdk"},
	} {
		if _, err := New(context.Background(), cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
	// Nothing listens there: a wrapped error after the timeout, not a hang.
	_, err := New(context.Background(), Config{Socket: filepath.Join(t.TempDir(), "none.sock"), Timeout: 300 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "connect") {
		t.Errorf("New against a missing socket: %v", err)
	}
}

func TestTunnelName(t *testing.T) {
	if got := TunnelName("AA:BB:CC:DD:EE:FF"); got != "wvxaabbccddeeff" {
		t.Errorf("TunnelName(mac) = %q", got)
	}
	a, b := TunnelName("host-a"), TunnelName("host-b")
	if a == b || len(a) != 15 || !strings.HasPrefix(a, "wvx") {
		t.Errorf("TunnelName(host-a)=%q host-b=%q", a, b)
	}
}

func TestAttachLinuxBridge(t *testing.T) {
	sock := startOVSDB(t)
	noLinks := newBackend(t, Config{Socket: sock, Bridge: "other"})
	if err := noLinks.AttachLinuxBridge("weave", 0); err == nil {
		t.Error("AttachLinuxBridge without Links succeeded")
	}
	links := &FakeLinks{Bridges: []string{"weave"}}
	b := newBackend(t, Config{Socket: sock, Links: links})
	if err := b.EnsureBridge(); err != nil {
		t.Fatal(err)
	}
	if err := b.AttachLinuxBridge("nope", 1376); err == nil {
		t.Error("AttachLinuxBridge to a missing Linux bridge succeeded")
	}
	for range 2 {
		if err := b.AttachLinuxBridge("weave", 1376); err != nil {
			t.Fatal(err)
		}
	}
	if got := strings.Join(links.Devices(), " "); got != UplinkOVS+" "+UplinkBridge {
		t.Errorf("devices %q", got)
	}
	if ports, _ := vsctl(sock, "list-ports", DefaultBridge); ports != UplinkOVS {
		t.Errorf("ports %q, want only %s", ports, UplinkOVS)
	}
	// A local port that is not owned stays on Cleanup.
	if err := b.AddLocalPort("keepme", false); err != nil {
		t.Fatal(err)
	}
	if err := b.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if got := links.Deleted(); !slices.Equal(got, []string{UplinkOVS}) {
		t.Errorf("Cleanup deleted %v, want only %s", got, UplinkOVS)
	}
	if len(links.Devices()) != 0 {
		t.Errorf("devices left: %v", links.Devices())
	}
	if brs, _ := vsctl(sock, "list-br"); brs != "" {
		t.Errorf("bridges left: %q", brs)
	}
}
