package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/weavemesh/weave/api"
	"github.com/weavemesh/weave/api/client"
	"github.com/weavemesh/weave/daemon"
	"github.com/weavemesh/weave/fastdp"
	"github.com/weavemesh/weave/internal/logx"
	"github.com/weavemesh/weave/internal/netdev"
	"github.com/weavemesh/weave/internal/testutil"
	"github.com/weavemesh/weave/mesh"
	"github.com/weavemesh/weave/tap"
	"github.com/weavemesh/weave/tap/taptest"
	"github.com/weavemesh/weave/udp"
	"github.com/weavemesh/weave/udp/udptest"
)

// mtu is every node's container MTU (fixed, so that the fake TAP and kernel agree with it).
const mtu = 1400

// node is one daemon and the fakes it runs on.
type node struct {
	i      int
	host   string // its underlay address (mesh, sleeve and fastdp)
	d      *daemon.Daemon
	c      *client.Client
	tap    *taptest.Device
	kernel *fastdp.FakeKernel // nil with NoFastDP
}

// cluster is N daemons over shared in-memory networks.
type cluster struct {
	t      *testing.T
	mem    *mesh.MemNetwork
	under  *udptest.Network
	kernel *fastdp.FakeNet
	nodes  []*node
	logs   logCheck
}

type opts struct {
	n        int
	password string
	noFastDP bool
}

// testLogger logs through logx.NewCheckHandler at every level, so every line the daemons
// write is held to the log vocabulary (docs/LOGGING.md) and may not repeat a key; the
// test's own "node" key is allowed.
func testLogger(lc *logCheck) *slog.Logger {
	var h slog.Handler = slog.DiscardHandler
	if os.Getenv("E2E_TEST_LOG") != "" {
		h = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})
	}
	return slog.New(logx.NewCheckHandler(h, []string{"node"}, lc.add))
}

// logCheck collects what the check handler finds; newCluster reports it when the test ends,
// after the daemons have stopped (each distinct problem once).
type logCheck struct {
	mu       sync.Mutex
	problems []string
}

func (lc *logCheck) add(p string) {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	if !slices.Contains(lc.problems, p) {
		lc.problems = append(lc.problems, p)
	}
}

func (lc *logCheck) report(t *testing.T) {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	for _, p := range lc.problems {
		t.Errorf("daemon log: %s", p)
	}
}

func hostAddr(i int) string { return fmt.Sprintf("10.99.0.%d", i+1) }

// newCluster starts o.n daemons; node i>0 has node 0 as its target, so the mesh forms a
// star that gossip completes. IPAM waits for a consensus of all n.
func newCluster(t *testing.T, o opts) *cluster {
	t.Helper()
	// The control socket's path must fit in sun_path (108 bytes): t.TempDir's may not.
	dir, err := os.MkdirTemp("", "weave-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	c := &cluster{t: t, mem: mesh.NewMemNetwork(), under: udptest.NewNetwork(1), kernel: fastdp.NewFakeNet()}
	t.Cleanup(func() { c.logs.report(t) }) // registered before the nodes': runs after they close
	for i := range o.n {
		c.nodes = append(c.nodes, c.start(i, o, filepath.Join(dir, fmt.Sprint(i))))
	}
	return c
}

func (c *cluster) start(i int, o opts, dir string) *node {
	t := c.t
	n := &node{i: i, host: hostAddr(i)}
	cfg := daemon.DefaultConfig()
	cfg.Name = mesh.PeerName(0x0a9900000000 + uint64(i+1)).String()
	cfg.NickName = fmt.Sprintf("n%d", i)
	cfg.StateDir = filepath.Join(dir, "state")
	cfg.Socket = filepath.Join(dir, "s.sock")
	cfg.MetricsAddr = "" // no TCP port outside the fakes
	// The bridge-ownership lock is real (an abstract socket in this network namespace):
	// a name per process and node keeps parallel test binaries and nodes apart.
	cfg.Bridge = fmt.Sprintf("we%d-%d", os.Getpid(), i)
	cfg.Password = []byte(o.password)
	cfg.NoFastDP = o.noFastDP
	cfg.MTU = mtu
	cfg.IPAllocInit = fmt.Sprintf("consensus=%d", o.n)
	cfg.Logger = testLogger(&c.logs).With("node", i)
	cfg.Links = netdev.NewFake()
	if i > 0 {
		cfg.Peers = []string{hostAddr(0)}
	}
	n.tap = taptest.New(taptest.Config{Name: cfg.TAP, MTU: mtu})
	cfg.Env = daemon.Env{
		OpenTAP: func(tap.Config) (tap.Device, error) { return n.tap, nil },
		ListenUDP: func(uc udp.Config) (udp.Bind, error) {
			return c.under.NewBind(netip.AddrPortFrom(netip.MustParseAddr(n.host), uc.Addr.Port()))
		},
		// No nftables table or device cleanup in the test machine's own namespace.
		Guard:             func(int) (daemon.Guard, error) { return fastdp.NewFakeFilter(), nil },
		RemoveKernelPaths: func() error { return nil },
		MeshTransport:     c.mem.Transport(n.host),
		MeshListenAddr:    fmt.Sprintf("%s:%d", n.host, cfg.Port),
		// Fast enough that a flip takes a fraction of a second, slow enough for -race on a
		// busy machine.
		FastDPTiming: fastdp.Timing{Interval: 50 * time.Millisecond, DownAfter: 400 * time.Millisecond,
			RecoverAfter: 300 * time.Millisecond},
	}
	if !o.noFastDP {
		n.kernel = c.kernel.Kernel(netip.MustParseAddr(n.host), mtu)
		cfg.Env.FastDPKernel = n.kernel
	}
	d, err := daemon.New(cfg)
	if err != nil {
		t.Fatalf("node %d: new: %v", i, err)
	}
	if err := d.Start(); err != nil {
		d.Close()
		t.Fatalf("node %d: start: %v", i, err)
	}
	n.d = d
	n.c = client.New(cfg.Socket)
	t.Cleanup(func() {
		n.c.Close()
		if err := d.Close(); err != nil {
			t.Errorf("node %d: close: %v", i, err)
		}
	})
	return n
}

func (n *node) report(t *testing.T) api.Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rep, err := n.c.Report(ctx)
	if err != nil {
		t.Fatalf("node %d: report: %v", n.i, err)
	}
	return rep
}

// connection returns n's connection to peer as its report shows it.
func (n *node) connection(t *testing.T, peer *node) (api.Connection, bool) {
	for _, c := range n.report(t).Router.Connections {
		if c.Peer == peer.d.Name().String() {
			return c, true
		}
	}
	return api.Connection{}, false
}

// waitOverlay waits until a's connection to b is established and carried by overlay.
func waitOverlay(t *testing.T, a, b *node, overlay string) {
	t.Helper()
	testutil.Eventually(t, 15*time.Second, fmt.Sprintf("node %d -> %d on %s", a.i, b.i, overlay), func() error {
		c, ok := a.connection(t, b)
		if !ok {
			return fmt.Errorf("no connection")
		}
		if c.State != "established" || c.Overlay != overlay {
			return fmt.Errorf("state %q overlay %q info %q", c.State, c.Overlay, c.Info)
		}
		return nil
	})
}

// mac is "container" k on node i.
func mac(i, k int) [6]byte { return [6]byte{0x02, 0xe2, 0xe0, 0, byte(i + 1), byte(k)} }

var bcast = [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// frame builds an Ethernet frame with an experimental EtherType carrying marker.
func frame(dst, src [6]byte, marker string) []byte {
	f := make([]byte, 64)
	copy(f[0:6], dst[:])
	copy(f[6:12], src[:])
	binary.BigEndian.PutUint16(f[12:14], 0x88b5)
	copy(f[14:], marker)
	return f
}

// send puts a frame on n's bridge side, as a container behind n's bridge would.
func (n *node) send(t *testing.T, f []byte) {
	t.Helper()
	if err := n.tap.Inject(f); err != nil {
		t.Fatalf("node %d: inject: %v", n.i, err)
	}
}

// sendUntil resends f from src until a frame holding marker reaches dst, and returns the
// frames dst wrote before it: the first copies may go before the routes and the sleeve
// are up, which the report shows per pair and not per path.
func sendUntil(t *testing.T, src, dst *node, f []byte, marker string) (before [][]byte) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, fmt.Sprintf("%q from node %d to node %d", marker, src.i, dst.i), func() error {
		src.send(t, f)
		for {
			select {
			case got := <-dst.tap.Written():
				if bytes.Contains(got, []byte(marker)) {
					return nil
				}
				before = append(before, got)
			case <-time.After(100 * time.Millisecond):
				return fmt.Errorf("not delivered")
			}
		}
	})
	return before
}

// holding returns the frames that contain marker.
func holding(frames [][]byte, marker string) int {
	n := 0
	for _, f := range frames {
		if bytes.Contains(f, []byte(marker)) {
			n++
		}
	}
	return n
}
