package udp

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/weavemesh/weave/internal/testutil"
)

// testNS is a network namespace created by a test.
type testNS struct {
	t    *testing.T
	name string
}

// ip runs `ip -n <ns> args...`.
func (ns testNS) ip(args ...string) {
	ns.t.Helper()
	if out, err := exec.Command("ip", append([]string{"-n", ns.name}, args...)...).CombinedOutput(); err != nil {
		ns.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// newNS creates a network namespace with loopback up, deleted at cleanup, and returns a
// function that runs code on a thread inside it (sockets belong to the namespace they are
// created in, and stay there).
func newNS(t *testing.T) func(func()) {
	f, _ := newNSWithIP(t)
	return f
}

func newNSWithIP(t *testing.T) (func(func()), testNS) {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireCommands(t, "ip")
	name := fmt.Sprintf("wvudp%d%04d", os.Getpid()%100000, rand.IntN(10000))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	inNS := func(fn func()) {
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
			t.Fatalf("enter netns: %v", err)
		}
		defer func() {
			if err := netns.Set(orig); err != nil {
				panic(fmt.Sprintf("cannot return to the original netns: %v", err))
			}
		}()
		fn()
	}
	ns := testNS{t: t, name: name}
	ns.ip("link", "set", "lo", "up")
	return inNS, ns
}

func listenIn(t *testing.T, inNS func(func()), cfg Config) Bind {
	t.Helper()
	var b Bind
	var err error
	inNS(func() { b, err = Listen(cfg) })
	if err != nil {
		t.Fatalf("Listen(%v): %v", cfg.Addr, err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func datagrams(n, size, last int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		sz := size
		if i == n-1 {
			sz = last
		}
		out[i] = bytes.Repeat([]byte{byte(i)}, sz)
		out[i][0] = byte(i >> 8)
	}
	return out
}

// receive reads until want datagrams arrived and checks them in order.
func receive(t *testing.T, b Bind, want [][]byte, from netip.AddrPort) {
	t.Helper()
	bufs := make([][]byte, b.BatchSize())
	for i := range bufs {
		bufs[i] = make([]byte, 2048)
	}
	sizes := make([]int, len(bufs))
	eps := make([]netip.AddrPort, len(bufs))
	got := 0
	done := make(chan struct{})
	timer := time.AfterFunc(10*time.Second, func() { _ = b.Close() }) // unblock a hung read
	defer timer.Stop()
	defer close(done)
	for got < len(want) {
		n, err := b.ReadBatch(bufs, sizes, eps)
		if err != nil {
			t.Fatalf("ReadBatch after %d of %d datagrams: %v", got, len(want), err)
		}
		for i := 0; i < n; i++ {
			if eps[i] != from {
				t.Fatalf("datagram %d from %v, want %v", got, eps[i], from)
			}
			if !bytes.Equal(bufs[i][:sizes[i]], want[got]) {
				t.Fatalf("datagram %d: %d bytes %x..., want %d bytes %x...", got, sizes[i],
					bufs[i][:min(4, sizes[i])], len(want[got]), want[got][:min(4, len(want[got]))])
			}
			got++
		}
	}
}

func TestBatchOverLoopback(t *testing.T) {
	inNS := newNS(t)
	for _, tc := range []struct {
		name                   string
		addr                   string
		disableGSO, disableGRO bool
	}{
		{"ipv4 gso gro", "127.0.0.1:0", false, false},
		{"ipv4 plain", "127.0.0.1:0", true, true},
		{"ipv4 gso only", "127.0.0.1:0", false, true},
		{"ipv4 gro only", "127.0.0.1:0", true, false},
		{"ipv6 gso gro", "[::1]:0", false, false},
		{"ipv6 plain", "[::1]:0", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Addr: netip.MustParseAddrPort(tc.addr), DisableGSO: tc.disableGSO, DisableGRO: tc.disableGRO}
			a, b := listenIn(t, inNS, cfg), listenIn(t, inNS, cfg)
			for _, bind := range []Bind{a, b} {
				o := bind.(Offloads)
				// The test kernel (>= 5.12) has both; the probe must find them unless disabled.
				if o.GSOActive() == tc.disableGSO || o.GROActive() == tc.disableGRO {
					t.Fatalf("gso %v gro %v, disabled gso %v gro %v", o.GSOActive(), o.GROActive(), tc.disableGSO, tc.disableGRO)
				}
			}
			// 3 batches: equal sizes with a short tail (one GSO run), then mixed sizes.
			want := datagrams(150, 1200, 700)
			want = append(want, datagrams(5, 100, 1300)...)
			sent := make(chan error, 1)
			go func() {
				var err error
				for _, chunk := range [][][]byte{want[:150], want[150:]} {
					if err == nil {
						err = a.WriteBatch(chunk, b.LocalAddr())
					}
				}
				sent <- err
			}()
			receive(t, b, want, a.LocalAddr())
			if err := <-sent; err != nil {
				t.Fatalf("WriteBatch: %v", err)
			}
			rs, ws := b.(StatsReporter).Stats(), a.(StatsReporter).Stats()
			t.Logf("receiver %+v; sender %+v", rs, ws)
			if ws.TxDatagrams != 155 || rs.RxDatagrams != 155 {
				t.Fatalf("counted %d sent, %d received, want 155", ws.TxDatagrams, rs.RxDatagrams)
			}
			if !tc.disableGSO && ws.TxMessages >= 155 {
				t.Fatalf("gso on but %d messages sent for 155 datagrams", ws.TxMessages)
			}
			if !tc.disableGSO && !tc.disableGRO && rs.RxMessages >= rs.RxDatagrams {
				t.Fatalf("gso+gro on but nothing was received coalesced")
			}
		})
	}
}

func TestDualStackUnmapsSenders(t *testing.T) {
	inNS := newNS(t)
	srv := listenIn(t, inNS, Config{Addr: netip.MustParseAddrPort("[::]:0")})
	cli := listenIn(t, inNS, Config{Addr: netip.MustParseAddrPort("127.0.0.1:0")})
	to := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), srv.LocalAddr().Port())
	want := datagrams(3, 50, 20)
	if err := cli.WriteBatch(want, to); err != nil {
		t.Fatal(err)
	}
	receive(t, srv, want, cli.LocalAddr())
	// And back to the IPv4 sender from the IPv6 socket.
	if err := srv.WriteBatch(want, cli.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	receive(t, cli, want, to)
}

func TestPathMTUAndDontFragment(t *testing.T) {
	inNS, ns := newNSWithIP(t)
	ns.ip("link", "set", "lo", "mtu", "1500")
	a := listenIn(t, inNS, Config{Addr: netip.MustParseAddrPort("127.0.0.1:0")})
	b := listenIn(t, inNS, Config{Addr: netip.MustParseAddrPort("127.0.0.1:0")})
	var mtu int
	var err error
	inNS(func() { mtu, err = a.(PathMTU).PathMTU(b.LocalAddr()) })
	if err != nil || mtu != 1500 {
		t.Fatalf("PathMTU = %d, %v; want 1500", mtu, err)
	}
	big := [][]byte{make([]byte, 3000)}
	if err := a.(PathMTU).SetDontFragment(true); err != nil {
		t.Fatal(err)
	}
	if err := a.WriteBatch(big, b.LocalAddr()); !errors.Is(err, syscall.EMSGSIZE) {
		t.Fatalf("3000-byte datagram with DF over a 1500 MTU: %v, want EMSGSIZE", err)
	}
	if err := a.(PathMTU).SetDontFragment(false); err != nil {
		t.Fatal(err)
	}
	if err := a.WriteBatch(big, b.LocalAddr()); err != nil {
		t.Fatalf("without DF the datagram is fragmented, not refused: %v", err)
	}
	bufs, sizes, eps := [][]byte{make([]byte, 4000)}, []int{0}, []netip.AddrPort{{}}
	if n, err := b.ReadBatch(bufs, sizes, eps); n != 1 || err != nil || sizes[0] != 3000 {
		t.Fatalf("ReadBatch = %d, %v, size %d", n, err, sizes[0])
	}
}

func TestCloseUnblocksRead(t *testing.T) {
	inNS := newNS(t)
	for _, gro := range []bool{false, true} {
		b := listenIn(t, inNS, Config{Addr: netip.MustParseAddrPort("127.0.0.1:0"), DisableGRO: !gro})
		errc := make(chan error, 1)
		go func() {
			_, err := b.ReadBatch([][]byte{make([]byte, 100)}, []int{0}, []netip.AddrPort{{}})
			errc <- err
		}()
		_ = b.Close()
		_ = b.Close()
		select {
		case err := <-errc:
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("ReadBatch after Close: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("ReadBatch still blocked after Close")
		}
		if err := b.WriteBatch([][]byte{{1}}, b.LocalAddr()); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("WriteBatch after Close: %v", err)
		}
	}
}

func TestAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation budgets do not hold under the race detector")
	}
	inNS := newNS(t)
	for _, gro := range []bool{false, true} {
		cfg := Config{Addr: netip.MustParseAddrPort("127.0.0.1:0"), DisableGRO: !gro}
		a, b := listenIn(t, inNS, cfg), listenIn(t, inNS, cfg)
		out := datagrams(64, 1200, 1200)
		bufs := make([][]byte, IdealBatchSize)
		for i := range bufs {
			bufs[i] = make([]byte, 2048)
		}
		sizes, eps := make([]int, len(bufs)), make([]netip.AddrPort, len(bufs))
		var perRead float64
		writes := testing.AllocsPerRun(20, func() {
			if err := a.WriteBatch(out, b.LocalAddr()); err != nil {
				t.Fatal(err)
			}
			got, reads := 0, 0
			for got < len(out) {
				n, err := b.ReadBatch(bufs, sizes, eps)
				if err != nil {
					t.Fatal(err)
				}
				got += n
				reads++
			}
			perRead = float64(reads)
		})
		if writes != 0 {
			t.Fatalf("gro=%v: a 64-datagram write and read (%v ReadBatch calls) allocates %.1f times", gro, perRead, writes)
		}
		w := testing.AllocsPerRun(20, func() {
			if err := a.WriteBatch(out[:8], netip.MustParseAddrPort("127.0.0.1:9")); err != nil {
				t.Fatal(err)
			}
		})
		if w != 0 {
			t.Fatalf("WriteBatch allocates %v times per batch", w)
		}
	}
}

// BenchmarkLoopback sends batches of 64 x 1400-byte datagrams through loopback in a fresh
// namespace and reads them back, with and without the offloads.
func BenchmarkLoopback(b *testing.B) {
	for _, off := range []struct {
		name     string
		gso, gro bool
	}{{"plain", false, false}, {"gso", true, false}, {"gso+gro", true, true}} {
		b.Run(off.name, func(b *testing.B) {
			inNS := benchNS(b)
			cfg := Config{Addr: netip.MustParseAddrPort("127.0.0.1:0"), DisableGSO: !off.gso, DisableGRO: !off.gro}
			var a, r Bind
			var err1, err2 error
			inNS(func() { a, err1 = Listen(cfg); r, err2 = Listen(cfg) })
			if err1 != nil || err2 != nil {
				b.Fatal(err1, err2)
			}
			defer a.Close()
			defer r.Close()
			out := datagrams(64, 1400, 1400)
			bufs := make([][]byte, IdealBatchSize)
			for i := range bufs {
				bufs[i] = make([]byte, 2048)
			}
			sizes, eps := make([]int, len(bufs)), make([]netip.AddrPort, len(bufs))
			b.SetBytes(64 * 1400)
			b.ReportAllocs()
			for b.Loop() {
				if err := a.WriteBatch(out, r.LocalAddr()); err != nil {
					b.Fatal(err)
				}
				for got := 0; got < len(out); {
					n, err := r.ReadBatch(bufs, sizes, eps)
					if err != nil {
						b.Fatal(err)
					}
					got += n
				}
			}
		})
	}
}

// benchNS is newNS for benchmarks.
func benchNS(b *testing.B) func(func()) {
	testutil.RequireRoot(b)
	name := fmt.Sprintf("wvudpb%d%04d", os.Getpid()%100000, rand.IntN(10000))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		b.Fatalf("ip netns add: %v: %s", err, out)
	}
	b.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		b.Fatalf("lo up: %v: %s", err, out)
	}
	return func(fn func()) {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		orig, _ := netns.Get()
		defer orig.Close()
		h, err := netns.GetFromName(name)
		if err != nil {
			b.Fatal(err)
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			b.Fatal(err)
		}
		defer func() { _ = netns.Set(orig) }()
		fn()
	}
}
