package udp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/testutil"
)

// readOne starts a ReadBatch of one datagram in a goroutine and returns where its result
// arrives.
func readOne(b Bind) <-chan error {
	errc := make(chan error, 1)
	go func() {
		n, err := b.ReadBatch([][]byte{make([]byte, 2048)}, []int{0}, []netip.AddrPort{{}})
		if err == nil && n != 1 {
			err = fmt.Errorf("ReadBatch read %d datagrams, want 1", n)
		}
		errc <- err
	}()
	return errc
}

func waitRead(t *testing.T, errc <-chan error, within time.Duration) {
	t.Helper()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(within):
		t.Fatalf("ReadBatch did not return within %v", within)
	}
}

func busyStats(b Bind) Stats { return b.(StatsReporter).Stats() }

// A datagram that arrives inside the window is read by the spinning reader: counted as a hit,
// with no park in between.
func TestBusyPollReadsWithinWindow(t *testing.T) {
	inNS := newNS(t)
	for _, gro := range []bool{false, true} {
		t.Run(fmt.Sprintf("gro=%v", gro), func(t *testing.T) {
			cfg := Config{Addr: netip.MustParseAddrPort("127.0.0.1:0"), DisableGRO: !gro}
			a := listenIn(t, inNS, cfg)
			cfg.BusyPoll = time.Minute // the whole test runs inside one window
			b := listenIn(t, inNS, cfg)
			if err := a.WriteBatch(datagrams(1, 100, 100), b.LocalAddr()); err != nil {
				t.Fatal(err)
			}
			waitRead(t, readOne(b), 10*time.Second) // opens the window
			errc := readOne(b)
			testutil.Eventually(t, 10*time.Second, "reader busy-polls", func() error {
				if b.(*linuxBind).recv.emptyPolls.Load() == 0 {
					return errors.New("no empty poll yet")
				}
				return nil
			})
			if err := a.WriteBatch(datagrams(1, 100, 100), b.LocalAddr()); err != nil {
				t.Fatal(err)
			}
			waitRead(t, errc, 10*time.Second)
			if s := busyStats(b); s.BusyPollHits != 1 || s.BusyPollParks != 0 {
				t.Fatalf("stats %+v: want 1 busy-poll hit and no park", s)
			}
		})
	}
}

// After the window the reader sleeps in the poller (it does not burn the CPU while idle) and
// still wakes up for the next datagram.
func TestBusyPollParksAfterWindow(t *testing.T) {
	inNS := newNS(t)
	cfg := Config{Addr: netip.MustParseAddrPort("127.0.0.1:0")}
	a := listenIn(t, inNS, cfg)
	cfg.BusyPoll = 2 * time.Millisecond
	b := listenIn(t, inNS, cfg)
	if err := a.WriteBatch(datagrams(1, 100, 100), b.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	waitRead(t, readOne(b), 10*time.Second)
	errc := readOne(b)
	testutil.Eventually(t, 10*time.Second, "reader parks after the busy-poll window", func() error {
		if s := busyStats(b); s.BusyPollParks == 0 {
			return fmt.Errorf("stats %+v: no park yet", s)
		}
		return nil
	})
	if err := a.WriteBatch(datagrams(1, 100, 100), b.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	waitRead(t, errc, 10*time.Second)
	if s := busyStats(b); s.BusyPollHits != 0 {
		t.Fatalf("stats %+v: a datagram after the window counted as a busy-poll hit", s)
	}
}

// Close ends a spin at once: the reader returns net.ErrClosed long before its window ends.
func TestBusyPollCloseDuringSpin(t *testing.T) {
	inNS := newNS(t)
	cfg := Config{Addr: netip.MustParseAddrPort("127.0.0.1:0")}
	a := listenIn(t, inNS, cfg)
	cfg.BusyPoll = time.Hour
	b := listenIn(t, inNS, cfg)
	if err := a.WriteBatch(datagrams(1, 100, 100), b.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	waitRead(t, readOne(b), 10*time.Second)
	errc := readOne(b) // spins: the window lasts an hour
	closed := make(chan error, 1)
	go func() { closed <- b.Close() }()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("ReadBatch after Close during a spin: %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ReadBatch still spinning 10s after Close")
	}
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
}

// BenchmarkPingPong bounces one datagram between two Binds over loopback: the round trip
// of two reader wake-ups, without and with busy polling. On 2 CPUs the two readers compete
// for the cores, which is the point of measuring it.
func BenchmarkPingPong(b *testing.B) {
	for _, bp := range []time.Duration{0, 50 * time.Microsecond} {
		b.Run(fmt.Sprintf("busypoll=%v", bp), func(b *testing.B) {
			inNS := benchNS(b)
			cfg := Config{Addr: netip.MustParseAddrPort("127.0.0.1:0"), BusyPoll: bp}
			var x, y Bind
			var err error
			inNS(func() {
				if x, err = Listen(cfg); err == nil {
					y, err = Listen(cfg)
				}
			})
			if err != nil {
				b.Fatal(err)
			}
			defer x.Close()
			defer y.Close()
			echoed := make(chan error, 1)
			go func() {
				bufs, sizes, eps := [][]byte{make([]byte, 2048)}, []int{0}, []netip.AddrPort{{}}
				for {
					n, err := y.ReadBatch(bufs, sizes, eps)
					if err != nil {
						echoed <- err
						return
					}
					if err := y.WriteBatch([][]byte{bufs[0][:sizes[0]]}, eps[0]); err != nil || n != 1 {
						echoed <- errors.Join(err, fmt.Errorf("echo read %d", n))
						return
					}
				}
			}()
			ping := [][]byte{make([]byte, 100)}
			bufs, sizes, eps := [][]byte{make([]byte, 2048)}, []int{0}, []netip.AddrPort{{}}
			b.ResetTimer()
			for range b.N {
				if err := x.WriteBatch(ping, y.LocalAddr()); err != nil {
					b.Fatal(err)
				}
				if _, err := x.ReadBatch(bufs, sizes, eps); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			_ = y.Close()
			if err := <-echoed; !errors.Is(err, net.ErrClosed) {
				b.Fatalf("echo: %v", err)
			}
		})
	}
}
