package taptest

import (
	"bytes"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/weavemesh/weave/tap"
)

func bufs(n int) ([][]byte, []int) {
	b := make([][]byte, n)
	for i := range b {
		b[i] = make([]byte, tap.Headroom+2000)
	}
	return b, make([]int, n)
}

func withHeadroom(frames ...string) [][]byte {
	var out [][]byte
	for _, f := range frames {
		out = append(out, append(make([]byte, tap.Headroom), f...))
	}
	return out
}

func TestPairCarriesBatches(t *testing.T) {
	a, b := NewPair(Config{})
	defer a.Close()
	defer b.Close()
	if n, err := a.Write(withHeadroom("one", "two", "three"), tap.Headroom); n != 3 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	rb, sizes := bufs(8)
	n, err := b.Read(rb, sizes, tap.Headroom)
	if err != nil || n != 3 {
		t.Fatalf("Read = %d, %v; want the whole batch of 3", n, err)
	}
	for i, want := range []string{"one", "two", "three"} {
		if got := string(rb[i][tap.Headroom : tap.Headroom+sizes[i]]); got != want {
			t.Fatalf("frame %d = %q, want %q", i, got, want)
		}
	}
	// And back, with a batch smaller than what is queued.
	if _, err := b.Write(withHeadroom("x", "y"), tap.Headroom); err != nil {
		t.Fatal(err)
	}
	if n, _ := a.Read(rb[:1], sizes, tap.Headroom); n != 1 || string(rb[0][tap.Headroom:tap.Headroom+sizes[0]]) != "x" {
		t.Fatalf("first small read: %d", n)
	}
	if n, _ := a.Read(rb, sizes, tap.Headroom); n != 1 || string(rb[0][tap.Headroom:tap.Headroom+sizes[0]]) != "y" {
		t.Fatalf("second small read: %d", n)
	}
}

func TestInjectAndWritten(t *testing.T) {
	d := New(Config{Name: "fake", MTU: 1400})
	defer d.Close()
	if d.Name() != "fake" || d.MTU() != 1400 || d.BatchSize() != tap.IdealBatchSize {
		t.Fatalf("name %q mtu %d batch %d", d.Name(), d.MTU(), d.BatchSize())
	}
	if err := d.Inject([]byte("frame")); err != nil {
		t.Fatal(err)
	}
	rb, sizes := bufs(2)
	if n, err := d.Read(rb, sizes, 0); n != 1 || err != nil || !bytes.Equal(rb[0][:sizes[0]], []byte("frame")) {
		t.Fatalf("Read = %d, %v", n, err)
	}
	w := withHeadroom("out")
	if _, err := d.Write(w, tap.Headroom); err != nil {
		t.Fatal(err)
	}
	w[0][tap.Headroom] = 'X' // the caller owns its buffer again: the written copy must not change
	select {
	case f := <-d.Written():
		if string(f) != "out" {
			t.Fatalf("written %q", f)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("nothing written")
	}
}

func TestOversizedFrameIsDropped(t *testing.T) {
	d := New(Config{})
	defer d.Close()
	_ = d.Inject(make([]byte, 3000))
	_ = d.Inject([]byte("small"))
	rb, sizes := bufs(2)
	if n, err := d.Read(rb, sizes, tap.Headroom); n != 1 || err != nil || sizes[0] != 5 {
		t.Fatalf("Read = %d, %v, size %d", n, err, sizes[0])
	}
	if d.Dropped() != 1 {
		t.Fatalf("Dropped() = %d", d.Dropped())
	}
}

func TestCloseUnblocks(t *testing.T) {
	a, b := NewPair(Config{Queue: 1})
	defer b.Close()
	readErr := make(chan error, 1)
	go func() {
		rb, sizes := bufs(1)
		_, err := a.Read(rb, sizes, 0)
		readErr <- err
	}()
	// a writes into b's queue (1 frame), which nobody reads, so the second frame blocks.
	writeErr := make(chan error, 1)
	go func() {
		_, err := a.Write(withHeadroom("1", "2", "3"), tap.Headroom)
		writeErr <- err
	}()
	_ = a.Close()
	_ = a.Close() // idempotent
	for _, ch := range []chan error{readErr, writeErr} {
		select {
		case err := <-ch:
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("got %v, want net.ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("still blocked after Close")
		}
	}
}

func TestWriteToClosedPeerDrops(t *testing.T) {
	a, b := NewPair(Config{Queue: 1})
	defer a.Close()
	_ = b.Close()
	if n, err := a.Write(withHeadroom("1", "2", "3"), tap.Headroom); err != nil || n != 3 {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if a.Dropped() < 2 {
		t.Fatalf("Dropped() = %d, want at least 2", a.Dropped())
	}
}

func TestPairAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation budgets do not hold under the race detector")
	}
	a, b := NewPair(Config{})
	defer a.Close()
	defer b.Close()
	w := withHeadroom("aaaaaaaaaaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbbbbbbbb", "c")
	rb, sizes := bufs(8)
	if n := testing.AllocsPerRun(100, func() {
		if _, err := a.Write(w, tap.Headroom); err != nil {
			t.Fatal(err)
		}
		if n, err := b.Read(rb, sizes, tap.Headroom); n != 3 || err != nil {
			t.Fatalf("Read = %d, %v", n, err)
		}
	}); n != 0 {
		t.Fatalf("a write/read of 3 frames allocates %v times", n)
	}
}
