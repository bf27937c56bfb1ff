package tap

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/weavemesh/weave/internal/testutil"
	"github.com/weavemesh/weave/udp"
)

// The root tests build this, inside namespaces they create and delete:
//
//	 ns <p>c (10.99.0.1, fd99::1)          ns <p>s (10.99.0.2, fd99::2)
//	      veth c0                                veth s0
//	        |                                      |
//	 ns <p>r: veth c1 - bridge brc - TAP tc   TAP ts - bridge brs - veth s1
//	                                  \          /
//	                          the test reads one TAP and writes the other
//
// so every frame between client and server crosses Device.Read and Device.Write.

func run(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// newNS creates a named network namespace deleted at cleanup.
func newNS(t testing.TB, name string) {
	t.Helper()
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
}

// inNS runs fn on a thread switched into the named namespace, and switches it back.
func inNS(t testing.TB, name string, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("get netns: %v", err)
	}
	defer orig.Close()
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("netns %s: %v", name, err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		t.Fatalf("enter netns %s: %v", name, err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic(fmt.Sprintf("cannot return to the original netns: %v", err)) // the thread is poisoned
		}
	}()
	fn()
}

type topo struct {
	client, server, router string
	tc, ts                 Device
}

func buildTopo(t testing.TB, offload bool, queues int) *topo {
	return buildTopoMixed(t, offload, offload, queues)
}

// buildTopoMixed is buildTopo with offloads chosen per device (client side, server side).
func buildTopoMixed(t testing.TB, offC, offS bool, queues int) *topo {
	testutil.RequireRoot(t)
	testutil.RequireCommands(t, "ip")
	p := fmt.Sprintf("wvtap%d%03d", os.Getpid()%100000, rand.IntN(1000))
	tp := &topo{client: p + "c", server: p + "s", router: p + "r"}
	for _, ns := range []string{tp.client, tp.server, tp.router} {
		newNS(t, ns)
	}
	for _, side := range []struct{ ns, veth, br, addr4, addr6 string }{
		{tp.client, "c", "brc", "10.99.0.1/24", "fd99::1/64"},
		{tp.server, "s", "brs", "10.99.0.2/24", "fd99::2/64"},
	} {
		run(t, "ip", "-n", tp.router, "link", "add", side.veth+"1", "type", "veth", "peer", "name", side.veth+"0", "netns", side.ns)
		run(t, "ip", "-n", tp.router, "link", "add", side.br, "type", "bridge")
		run(t, "ip", "-n", tp.router, "link", "set", side.veth+"1", "master", side.br, "up")
		run(t, "ip", "-n", tp.router, "link", "set", side.br, "up")
		run(t, "ip", "-n", side.ns, "addr", "add", side.addr4, "dev", side.veth+"0")
		run(t, "ip", "-n", side.ns, "addr", "add", side.addr6, "dev", side.veth+"0", "nodad")
		run(t, "ip", "-n", side.ns, "link", "set", side.veth+"0", "up")
	}
	open := func(name string, offload bool) Device {
		var d Device
		var err error
		inNS(t, tp.router, func() { d, err = Open(Config{Name: name, Offload: offload, Queues: queues}) })
		if err != nil {
			t.Fatalf("Open(%s, offload=%v): %v", name, offload, err)
		}
		t.Cleanup(func() { _ = d.Close() })
		if d.Name() != name || d.MTU() != 1500 || d.BatchSize() != IdealBatchSize {
			t.Fatalf("device %q mtu %d batch %d", d.Name(), d.MTU(), d.BatchSize())
		}
		if got := d.(Offloader).OffloadActive(); got != offload {
			t.Fatalf("OffloadActive() = %v, want %v", got, offload)
		}
		return d
	}
	tp.tc, tp.ts = open("tc", offC), open("ts", offS)
	run(t, "ip", "-n", tp.router, "link", "set", "tc", "master", "brc", "up")
	run(t, "ip", "-n", tp.router, "link", "set", "ts", "master", "brs", "up")
	return tp
}

// forward copies frames from one device to the other until the source is closed.
func forward(t testing.TB, from, to Device, maxFrame *int, mu *sync.Mutex) {
	bufs := make([][]byte, IdealBatchSize)
	wbufs := make([][]byte, IdealBatchSize)
	sizes := make([]int, IdealBatchSize)
	for i := range bufs {
		bufs[i] = make([]byte, Headroom+MaxFrameSize)
	}
	for {
		n, err := from.Read(bufs, sizes, Headroom)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("read %s: %v", from.Name(), err)
			}
			return
		}
		mu.Lock()
		for i := 0; i < n; i++ {
			*maxFrame = max(*maxFrame, sizes[i])
			wbufs[i] = bufs[i][:Headroom+sizes[i]]
		}
		mu.Unlock()
		if _, err := to.Write(wbufs[:n], Headroom); err != nil && errors.Is(err, net.ErrClosed) {
			return
		}
	}
}

// transfer sends size bytes over TCP from the client to the server namespace and returns
// how long it took; the server checks every byte.
func transfer(t *testing.T, tp *topo, network, serverAddr string, size int) time.Duration {
	var ln net.Listener
	inNS(t, tp.server, func() {
		var err error
		if ln, err = net.Listen(network, serverAddr); err != nil {
			t.Fatalf("listen: %v", err)
		}
	})
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		h := sha256.New()
		_, _ = io.Copy(h, c)
		got <- h.Sum(nil)
	}()
	var conn net.Conn
	inNS(t, tp.client, func() {
		d := net.Dialer{Timeout: 10 * time.Second}
		var err error
		if conn, err = d.DialContext(context.Background(), network, ln.Addr().String()); err != nil {
			t.Fatalf("dial through the taps: %v", err)
		}
	})
	src := rand.NewChaCha8([32]byte{1})
	data := make([]byte, size)
	_, _ = src.Read(data)
	want := sha256.Sum256(data)
	start := time.Now()
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := conn.Write(data); err != nil {
		t.Fatalf("write: %v", err)
	}
	_ = conn.Close()
	select {
	case h := <-got:
		if !bytes.Equal(h, want[:]) {
			t.Fatalf("server received different bytes")
		}
	case <-time.After(60 * time.Second):
		t.Fatal("server did not finish")
	}
	return time.Since(start)
}

// queuesOf returns the queues of d: all of them for a multiqueue device.
func queuesOf(d Device) []Device {
	if mq, ok := d.(MultiQueue); ok {
		return mq.Queues()
	}
	return []Device{d}
}

func testTCPThroughTaps(t *testing.T, offload bool, queues int) {
	tp := buildTopo(t, offload, queues)
	var mu sync.Mutex
	var maxC, maxS int
	var wg sync.WaitGroup
	// One reader per queue, as the router runs them; each writes to the other device's
	// first queue.
	for _, q := range queuesOf(tp.tc) {
		wg.Add(1)
		go func() { defer wg.Done(); forward(t, q, tp.ts, &maxC, &mu) }()
	}
	for _, q := range queuesOf(tp.ts) {
		wg.Add(1)
		go func() { defer wg.Done(); forward(t, q, tp.tc, &maxS, &mu) }()
	}
	defer func() {
		_ = tp.tc.Close()
		_ = tp.ts.Close()
		wg.Wait()
	}()
	size := 32 << 20
	if s := os.Getenv("WEAVE_TAP_TEST_MIB"); s != "" {
		if n, err := strconv.Atoi(s); err == nil {
			size = n << 20
		}
	}
	for _, c := range []struct{ network, addr string }{{"tcp4", "10.99.0.2:0"}, {"tcp6", "[fd99::2]:0"}} {
		d := transfer(t, tp, c.network, c.addr, size)
		t.Logf("offload=%v queues=%d %s: %d MiB in %v: %.2f Gbit/s", offload, queues, c.network, size>>20, d, float64(size)*8/d.Seconds()/1e9)
	}
	sc, ss := sumStats(tp.tc), sumStats(tp.ts)
	t.Logf("client-side tap %+v", sc)
	t.Logf("server-side tap %+v", ss)
	mu.Lock()
	defer mu.Unlock()
	if maxC > 1514 || maxS > 1514 {
		t.Fatalf("Read returned a %d-byte frame: super-frames must be segmented to the MTU", max(maxC, maxS))
	}
	if offload {
		if sc.RxSuperFrames == 0 {
			t.Fatalf("the kernel handed over no TSO super-frame: %+v", sc)
		}
		if ss.TxCoalesced == 0 || ss.TxWrites >= ss.TxFrames {
			t.Fatalf("no segment was coalesced on the server side: %+v", ss)
		}
	} else if sc.RxSuperFrames != 0 || ss.TxCoalesced != 0 {
		t.Fatalf("plain devices used offloads: %+v %+v", sc, ss)
	}
	if sc.RxDropped != 0 || ss.TxDropped != 0 {
		t.Fatalf("frames dropped: %+v %+v", sc, ss)
	}
}

func sumStats(d Device) Stats {
	var s Stats
	for _, q := range queuesOf(d) {
		qs := q.(StatsReporter).Stats()
		s.RxFrames += qs.RxFrames
		s.RxSuperFrames += qs.RxSuperFrames
		s.RxDropped += qs.RxDropped
		s.TxFrames += qs.TxFrames
		s.TxWrites += qs.TxWrites
		s.TxCoalesced += qs.TxCoalesced
		s.TxDropped += qs.TxDropped
	}
	return s
}

func TestTCPThroughTapsOffload(t *testing.T)           { testTCPThroughTaps(t, true, 1) }
func TestTCPThroughTapsPlain(t *testing.T)             { testTCPThroughTaps(t, false, 1) }
func TestTCPThroughTapsOffloadMultiqueue(t *testing.T) { testTCPThroughTaps(t, true, 2) }

func TestOpenPersistAndClose(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireCommands(t, "ip")
	ns := fmt.Sprintf("wvtapp%d%03d", os.Getpid()%100000, rand.IntN(1000))
	newNS(t, ns)
	linkExists := func() bool { return exec.Command("ip", "-n", ns, "link", "show", "tp").Run() == nil }
	for _, offload := range []bool{false, true} {
		var d Device
		var err error
		inNS(t, ns, func() { d, err = Open(Config{Name: "tp", Offload: offload, Persist: true, MTU: 1400, Queues: 2}) })
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		if d.MTU() != 1400 || len(d.(MultiQueue).Queues()) != 2 {
			t.Fatalf("mtu %d, queues %d", d.MTU(), len(d.(MultiQueue).Queues()))
		}
		if err := d.Close(); err != nil || d.Close() != nil {
			t.Fatalf("Close: %v", err)
		}
		if _, err := d.Read([][]byte{make([]byte, 2000)}, []int{0}, 0); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read after Close: %v, want net.ErrClosed", err)
		}
		if _, err := d.Write([][]byte{make([]byte, 100)}, 0); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Write after Close: %v, want net.ErrClosed", err)
		}
		if !linkExists() {
			t.Fatalf("offload=%v: persistent tap went away on Close", offload)
		}
		// Re-opening without Persist clears it, so the interface goes with the device.
		inNS(t, ns, func() { d, err = Open(Config{Name: "tp", Offload: offload, Queues: 2}) })
		if err != nil {
			t.Fatalf("re-Open: %v", err)
		}
		_ = d.Close()
		testutil.Eventually(t, 5*time.Second, "tap removed after a non-persistent close", func() error {
			if linkExists() {
				return errors.New("tp still exists")
			}
			return nil
		})
	}
}

func TestReadUnblocksOnClose(t *testing.T) {
	testutil.RequireRoot(t)
	ns := fmt.Sprintf("wvtapc%d%03d", os.Getpid()%100000, rand.IntN(1000))
	newNS(t, ns)
	for _, offload := range []bool{false, true} {
		var d Device
		var err error
		inNS(t, ns, func() { d, err = Open(Config{Name: "tq", Offload: offload}) })
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		done := make(chan error, 1)
		go func() {
			_, err := d.Read([][]byte{make([]byte, 2000)}, []int{0}, 0)
			done <- err
		}()
		_ = d.Close()
		select {
		case err := <-done:
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("blocked Read returned %v, want net.ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Read still blocked after Close")
		}
	}
}

// BenchmarkIperfThroughTaps measures a single TCP stream (iperf3, 3 s) between the client
// and server namespaces while this process forwards every frame between the two TAPs: the
// ceiling of the bridge side of a userspace overlay, before UDP and crypto.
func BenchmarkIperfThroughTaps(b *testing.B) {
	testutil.RequireCommands(b, "iperf3")
	for _, offload := range []bool{false, true} {
		b.Run(fmt.Sprintf("offload=%v", offload), func(b *testing.B) {
			tp := buildTopo(b, offload, 1)
			var mu sync.Mutex
			var m1, m2 int
			var wg sync.WaitGroup
			wg.Add(2)
			go func() { defer wg.Done(); forward(b, tp.tc, tp.ts, &m1, &mu) }()
			go func() { defer wg.Done(); forward(b, tp.ts, tp.tc, &m2, &mu) }()
			defer func() { _ = tp.tc.Close(); _ = tp.ts.Close(); wg.Wait() }()
			srv := exec.Command("ip", "netns", "exec", tp.server, "iperf3", "-s", "-p", "5201")
			if err := srv.Start(); err != nil {
				b.Fatal(err)
			}
			defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
			var gbps float64
			for b.Loop() { // one 3 s iperf3 run per iteration; the default benchtime makes it one
				var out []byte
				testutil.Eventually(b, 10*time.Second, "iperf3 client connects", func() error {
					var err error
					out, err = exec.Command("ip", "netns", "exec", tp.client, "iperf3", "-c", "10.99.0.2", "-p", "5201",
						"-t", "3", "-J").Output()
					return err
				})
				var res struct {
					End struct {
						SumReceived struct {
							BitsPerSecond float64 `json:"bits_per_second"`
						} `json:"sum_received"`
					} `json:"end"`
				}
				if err := json.Unmarshal(out, &res); err != nil {
					b.Fatalf("iperf3 output: %v", err)
				}
				gbps = res.End.SumReceived.BitsPerSecond / 1e9
			}
			b.ReportMetric(gbps, "Gbit/s")
		})
	}
}

func TestOffloadRefusedFallsBackToPlain(t *testing.T) {
	testutil.RequireRoot(t)
	ns := fmt.Sprintf("wvtapf%d%03d", os.Getpid()%100000, rand.IntN(1000))
	newNS(t, ns)
	var logs bytes.Buffer
	refuse := func(Config, int) ([]*device, string, error) {
		return nil, "", fmt.Errorf("tunsetoffload tf: %w", syscall.EINVAL)
	}
	var d Device
	var err error
	inNS(t, ns, func() {
		d, err = open(Config{Name: "tf", Offload: true, Logger: slog.New(slog.NewTextHandler(&logs, nil))}, refuse)
	})
	if err != nil {
		t.Fatalf("open with offloads refused: %v", err)
	}
	defer d.Close()
	if d.(Offloader).OffloadActive() || d.Name() != "tf" {
		t.Fatalf("got %q with offloads %v, want the plain path", d.Name(), d.(Offloader).OffloadActive())
	}
	if !strings.Contains(logs.String(), "offloads unavailable") || !strings.Contains(logs.String(), "invalid argument") {
		t.Fatalf("the fallback was not logged with its reason: %s", logs.String())
	}
}

// TestUDPGSOThroughTaps sends UDP with UDP_SEGMENT from the client namespace: with USO on the
// TAP (kernel >= 6.2) the kernel hands the forwarder whole GSO bursts, which Read must cut
// back into the original datagrams.
func TestUDPGSOThroughTaps(t *testing.T) {
	tp := buildTopo(t, true, 1)
	var mu sync.Mutex
	var m1, m2 int
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); forward(t, tp.tc, tp.ts, &m1, &mu) }()
	go func() { defer wg.Done(); forward(t, tp.ts, tp.tc, &m2, &mu) }()
	defer func() { _ = tp.tc.Close(); _ = tp.ts.Close(); wg.Wait() }()
	var cli, srv udp.Bind
	var err error
	inNS(t, tp.server, func() { srv, err = udp.Listen(udp.Config{Addr: netip.MustParseAddrPort("10.99.0.2:7000")}) })
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	inNS(t, tp.client, func() { cli, err = udp.Listen(udp.Config{Addr: netip.MustParseAddrPort("10.99.0.1:7000")}) })
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if !cli.(udp.Offloads).GSOActive() {
		t.Fatal("the sending socket has no UDP GSO")
	}
	bufs, sizes, eps := make([][]byte, udp.IdealBatchSize), make([]int, udp.IdealBatchSize), make([]netip.AddrPort, udp.IdealBatchSize)
	for i := range bufs {
		bufs[i] = make([]byte, 2048)
	}
	timer := time.AfterFunc(20*time.Second, func() { _ = srv.Close() })
	defer timer.Stop()
	const batches, per = 20, 40
	for b := range batches {
		out := make([][]byte, per)
		for i := range out {
			out[i] = bytes.Repeat([]byte{byte(b), byte(i)}, 600)
		}
		// The first ARP exchange can lose a datagram or two: resend until the first arrives.
		got := 0
		testutil.Eventually(t, 10*time.Second, "a burst crosses the taps", func() error {
			if got == 0 {
				if err := cli.WriteBatch(out, srv.LocalAddr()); err != nil {
					return err
				}
			}
			for got < per {
				n, err := srv.ReadBatch(bufs, sizes, eps)
				if err != nil {
					return err
				}
				for i := 0; i < n; i++ {
					if sizes[i] != 1200 || bufs[i][0] != byte(b) || bufs[i][1] != byte(got) || eps[i] != cli.LocalAddr() {
						return fmt.Errorf("burst %d datagram %d: %d bytes %x from %v", b, got, sizes[i], bufs[i][:2], eps[i])
					}
					got++
				}
			}
			return nil
		})
	}
	st := tp.tc.(StatsReporter).Stats()
	t.Logf("client-side tap %+v", st)
	if st.RxSuperFrames == 0 || st.RxDropped != 0 {
		t.Fatalf("no UDP GSO burst was segmented, or frames were dropped: %+v", st)
	}
}
