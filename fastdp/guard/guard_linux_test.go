package guard

import (
	"errors"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/netlab"
	"github.com/weavemesh/weave/internal/testutil"
)

// TestGuardAdmitsOnlyAllowed: in a lab host, a UDP socket on the guarded port receives a
// datagram from another host only while that host's address is allowed; what the guard
// drops is counted; reopening drops every earlier allowance (a restart after kill -9);
// Remove takes the table away and the port is open again.
func TestGuardAdmitsOnlyAllowed(t *testing.T) {
	testutil.RequireRoot(t)
	lab := netlab.New(t, netlab.Options{Hosts: 3})
	h1, h2, h3 := lab.Hosts[0], lab.Hosts[1], lab.Hosts[2]
	const port = 16784
	dst := netip.AddrPortFrom(h1.Addr, port)
	ln, err := h1.ListenPacket("udp4", ":16784")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// got sends one datagram from h and reports whether it arrived (a sender that is let
	// through arrives well within the wait; one that is dropped never does).
	seq := byte(0)
	got := func(h *netlab.Host) bool {
		t.Helper()
		seq++
		if err := netlab.SendUDP(h, dst, []byte{seq}); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 16)
		for {
			ln.SetReadDeadline(time.Now().Add(time.Second))
			n, _, err := ln.ReadFrom(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return false
			}
			if err != nil {
				t.Fatal(err)
			}
			if n == 1 && buf[0] == seq {
				return true
			}
		}
	}
	if !got(h2) {
		t.Fatal("without a guard the datagram did not arrive: the check cannot tell anything")
	}

	var g *Guard
	if err := h1.Do(func() (err error) { g, err = Open(Config{Port: port}); return err }); err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if got(h2) || got(h3) {
		t.Fatal("the guard let a datagram from a host that is not allowed through")
	}
	if err := g.Allow(h2.Addr, true); err != nil {
		t.Fatal(err)
	}
	if !got(h2) {
		t.Fatal("an allowed host's datagram was dropped")
	}
	if got(h3) {
		t.Fatal("allowing h2 let h3 through")
	}
	if n, err := g.Refused(); err != nil || n != 3 {
		t.Fatalf("refused = %d, %v; want the 3 dropped datagrams", n, err)
	}
	var st State
	if err := h1.Do(func() (err error) { st, err = Read(""); return err }); err != nil {
		t.Fatal(err)
	}
	if !st.Present || st.Port != port || !slices.Equal(st.Allowed, []netip.Addr{h2.Addr}) {
		t.Fatalf("Read = %+v; want the table with port %d admitting %s", st, port, h2.Addr)
	}

	// A new Open (the daemon restarted, maybe after kill -9) starts from nobody.
	g.Close()
	var g2 *Guard
	if err := h1.Do(func() (err error) { g2, err = Open(Config{Port: port}); return err }); err != nil {
		t.Fatal(err)
	}
	defer g2.Close()
	if got(h2) {
		t.Fatal("an allowance of the previous guard survived Open")
	}
	if err := g2.Allow(h2.Addr, true); err != nil {
		t.Fatal(err)
	}
	if err := g2.Allow(h2.Addr, false); err != nil {
		t.Fatal(err)
	}
	if err := g2.Allow(h2.Addr, false); err != nil {
		t.Fatalf("withdrawing an address twice: %v", err)
	}
	if got(h2) {
		t.Fatal("a withdrawn address still gets through")
	}
	if err := h1.Do(func() error { return Remove("") }); err != nil {
		t.Fatal(err)
	}
	if err := h1.Do(func() (err error) { st, err = Read(""); return err }); err != nil || st.Present {
		t.Fatalf("after Remove: %+v, %v", st, err)
	}
	if !got(h3) {
		t.Fatal("the port stays closed after Remove")
	}
	if err := h1.Do(func() error { return Remove("") }); err != nil {
		t.Fatalf("Remove of a missing table: %v", err)
	}
}
