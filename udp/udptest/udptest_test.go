package udptest

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/weavemesh/weave/udp"
)

type reader struct {
	bufs  [][]byte
	sizes []int
	eps   []netip.AddrPort
}

func newReader() *reader {
	r := &reader{bufs: make([][]byte, udp.IdealBatchSize), sizes: make([]int, udp.IdealBatchSize), eps: make([]netip.AddrPort, udp.IdealBatchSize)}
	for i := range r.bufs {
		r.bufs[i] = make([]byte, 2048)
	}
	return r
}

// readN reads until n datagrams arrived and returns them as strings with their senders.
func (r *reader) readN(t *testing.T, b *Bind, n int) (data []string, from []netip.AddrPort) {
	t.Helper()
	for len(data) < n {
		k, err := b.ReadBatch(r.bufs, r.sizes, r.eps)
		if err != nil {
			t.Fatalf("ReadBatch: %v", err)
		}
		for i := 0; i < k; i++ {
			data = append(data, string(r.bufs[i][:r.sizes[i]]))
			from = append(from, r.eps[i])
		}
	}
	return data, from
}

func dgrams(s ...string) [][]byte {
	var out [][]byte
	for _, x := range s {
		out = append(out, []byte(x))
	}
	return out
}

func TestPair(t *testing.T) {
	a, b := NewPair()
	defer a.Close()
	defer b.Close()
	if err := a.WriteBatch(dgrams("1", "2", "3"), b.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	data, from := newReader().readN(t, b, 3)
	if len(data) != 3 || data[0] != "1" || data[2] != "3" || from[0] != a.LocalAddr() {
		t.Fatalf("got %q from %v", data, from)
	}
	if err := b.WriteBatch(dgrams("back"), a.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	if data, _ := newReader().readN(t, a, 1); data[0] != "back" {
		t.Fatalf("got %q", data)
	}
}

func TestHubRelayLossAndBlocking(t *testing.T) {
	n := NewNetwork(42)
	addr := func(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
	a, _ := n.NewBind(addr("10.0.0.1:6783"))
	m, _ := n.NewBind(addr("10.0.0.2:6783"))
	c, _ := n.NewBind(addr("10.0.0.3:6783"))
	for _, x := range []*Bind{a, m, c} {
		defer x.Close()
	}
	if _, err := n.NewBind(addr("10.0.0.1:6783")); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("duplicate address: %v", err)
	}
	// a cannot reach c directly; the middle peer relays.
	n.Block(a.LocalAddr(), c.LocalAddr())
	if err := a.WriteBatch(dgrams("direct"), c.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	if err := a.WriteBatch(dgrams("via m"), m.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	data, _ := newReader().readN(t, m, 1)
	if err := m.WriteBatch(dgrams(data...), c.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	got, from := newReader().readN(t, c, 1)
	if got[0] != "via m" || from[0] != m.LocalAddr() {
		t.Fatalf("c got %q from %v", got, from)
	}
	if d, dr := n.Counts(a.LocalAddr(), c.LocalAddr()); d != 0 || dr != 1 {
		t.Fatalf("blocked link: delivered %d dropped %d", d, dr)
	}
	// The block is one way only.
	if err := c.WriteBatch(dgrams("reply"), a.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	if got, _ := newReader().readN(t, a, 1); got[0] != "reply" {
		t.Fatalf("reply %q", got)
	}
	n.Unblock(a.LocalAddr(), c.LocalAddr())
	// 50% loss over 1000 datagrams: some but not all arrive, and the counts add up.
	n.SetLoss(a.LocalAddr(), c.LocalAddr(), 0.5)
	_, dropped0 := n.Counts(a.LocalAddr(), c.LocalAddr())
	batch := make([][]byte, 100)
	for i := range batch {
		batch[i] = []byte{byte(i)}
	}
	for range 10 {
		if err := a.WriteBatch(batch, c.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	d, dr := n.Counts(a.LocalAddr(), c.LocalAddr())
	dr -= dropped0
	if d+dr != 1000 || d < 400 || d > 600 {
		t.Fatalf("with 50%% loss: delivered %d, dropped %d", d, dr)
	}
	if got, _ := newReader().readN(t, c, int(d)); len(got) != int(d) {
		t.Fatalf("read %d of %d delivered", len(got), d)
	}
	// Nobody at the address: lost, counted.
	if err := a.WriteBatch(dgrams("void"), addr("10.0.0.9:1")); err != nil {
		t.Fatal(err)
	}
	if _, dr := n.Counts(a.LocalAddr(), addr("10.0.0.9:1")); dr != 1 {
		t.Fatalf("datagram to nowhere not counted: %d", dr)
	}
}

func TestPathMTU(t *testing.T) {
	n := NewNetwork(1)
	a, _ := n.NewBind(netip.MustParseAddrPort("10.0.0.1:1"))
	b, _ := n.NewBind(netip.MustParseAddrPort("10.0.0.2:1"))
	defer a.Close()
	defer b.Close()
	n.SetPathMTU(a.LocalAddr(), b.LocalAddr(), 1400)
	if mtu, _ := a.PathMTU(b.LocalAddr()); mtu != 1400 {
		t.Fatalf("PathMTU = %d", mtu)
	}
	_ = a.SetDontFragment(true)
	err := a.WriteBatch([][]byte{make([]byte, 1372), make([]byte, 1373)}, b.LocalAddr())
	if !errors.Is(err, syscall.EMSGSIZE) {
		t.Fatalf("oversize with DF: %v", err)
	}
	if d, _ := n.Counts(a.LocalAddr(), b.LocalAddr()); d != 1 {
		t.Fatalf("the datagram before the oversize one was not sent: %d", d)
	}
	_ = a.SetDontFragment(false)
	if err := a.WriteBatch([][]byte{make([]byte, 1373)}, b.LocalAddr()); err != nil {
		t.Fatalf("without DF: %v", err)
	}
}

func TestCloseUnblocks(t *testing.T) {
	a, b := NewPair()
	defer b.Close()
	errc := make(chan error, 1)
	go func() {
		_, err := a.ReadBatch([][]byte{make([]byte, 10)}, []int{0}, []netip.AddrPort{{}})
		errc <- err
	}()
	_ = a.Close()
	_ = a.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("ReadBatch after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ReadBatch still blocked")
	}
	if err := a.WriteBatch(dgrams("x"), b.LocalAddr()); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("WriteBatch after Close: %v", err)
	}
	// Writing to the closed bind is a silent loss, as on a network.
	if err := b.WriteBatch(dgrams("x"), a.LocalAddr()); err != nil {
		t.Fatalf("write to a closed peer: %v", err)
	}
}

func TestPairAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation budgets do not hold under the race detector")
	}
	a, b := NewPair()
	defer a.Close()
	defer b.Close()
	batch := dgrams("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbbbbbb", "c")
	r := newReader()
	if n := testing.AllocsPerRun(100, func() {
		if err := a.WriteBatch(batch, b.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		if k, err := b.ReadBatch(r.bufs, r.sizes, r.eps); k != 3 || err != nil {
			t.Fatalf("ReadBatch = %d, %v", k, err)
		}
	}); n != 0 {
		t.Fatalf("a batch of 3 allocates %v times", n)
	}
}
