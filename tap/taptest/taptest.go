package taptest

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"github.com/weavemesh/weave/tap"
)

// Config sizes a fake device. The zero value is usable.
type Config struct {
	Name string // default "taptest0"
	MTU  int    // default tap.DefaultMTU
	// Queue is how many frames may wait to be read before Write blocks (default 1024).
	Queue int
}

// Device is an in-memory tap.Device. Frames written to it go to its peer (NewPair) or to the
// Written channel (New); frames for Read come from its peer or from Inject. Buffers are
// recycled through a free list, so a warm Write/Read pair allocates nothing per frame.
type Device struct {
	name  string
	mtu   int
	in    chan []byte // frames waiting for Read
	out   chan []byte // where Write delivers
	peer  *Device     // nil for a standalone device
	free  chan []byte // recycled buffers, shared by a pair
	done  chan struct{}
	close sync.Once

	dropped atomic.Uint64
}

var _ tap.Device = (*Device)(nil)

// bufSize is the capacity of pooled buffers: any frame up to a jumbo MTU fits.
const bufSize = 9216 + 18

func (c Config) withDefaults() Config {
	if c.Name == "" {
		c.Name = "taptest0"
	}
	if c.MTU == 0 {
		c.MTU = tap.DefaultMTU
	}
	if c.Queue == 0 {
		c.Queue = 1024
	}
	return c
}

func newDevice(c Config, free chan []byte) *Device {
	return &Device{name: c.Name, mtu: c.MTU, in: make(chan []byte, c.Queue), free: free, done: make(chan struct{})}
}

func newFree(n int) chan []byte {
	free := make(chan []byte, n)
	for range n {
		free <- make([]byte, 0, bufSize)
	}
	return free
}

// New returns a standalone device: tests Inject frames for Read and receive what is written
// on Written.
func New(cfg Config) *Device {
	cfg = cfg.withDefaults()
	d := newDevice(cfg, newFree(2*cfg.Queue))
	d.out = make(chan []byte, cfg.Queue)
	return d
}

// NewPair returns two devices wired back to back: what one writes, the other reads.
func NewPair(cfg Config) (a, b *Device) {
	cfg = cfg.withDefaults()
	free := newFree(2 * cfg.Queue)
	a, b = newDevice(cfg, free), newDevice(cfg, free)
	b.name = cfg.Name + "-peer"
	a.peer, b.peer = b, a
	a.out, b.out = b.in, a.in
	return a, b
}

// Inject queues a copy of frame to be returned by Read. It blocks while the queue is full.
func (d *Device) Inject(frame []byte) error {
	b := d.get(frame)
	select {
	case d.in <- b:
		return nil
	case <-d.done:
		return fmt.Errorf("taptest %s: inject: %w", d.name, net.ErrClosed)
	}
}

// Written delivers the frames written to a standalone device; the receiver owns them. It is
// nil for a device of a pair.
func (d *Device) Written() <-chan []byte {
	if d.peer != nil {
		return nil
	}
	return d.out
}

// Dropped counts frames lost because the peer was closed or a frame did not fit a buffer.
func (d *Device) Dropped() uint64 { return d.dropped.Load() }

func (d *Device) get(frame []byte) []byte {
	var b []byte
	select {
	case b = <-d.free:
	default:
		b = make([]byte, 0, max(bufSize, len(frame)))
	}
	return append(b[:0], frame...)
}

func (d *Device) put(b []byte) {
	if cap(b) != bufSize {
		return
	}
	select {
	case d.free <- b:
	default:
	}
}

// Read implements tap.Device: it blocks for one frame, then takes whatever else is queued.
func (d *Device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	var b []byte
	select {
	case <-d.done:
		return 0, fmt.Errorf("taptest %s: read: %w", d.name, net.ErrClosed)
	case b = <-d.in:
	}
	n := 0
	for {
		if len(bufs[n])-offset < len(b) {
			d.dropped.Add(1)
		} else {
			sizes[n] = copy(bufs[n][offset:], b)
			n++
		}
		d.put(b)
		if n == len(bufs) {
			return n, nil
		}
		select {
		case b = <-d.in:
		default:
			if n == 0 {
				return d.Read(bufs, sizes, offset) // everything so far was dropped: block again
			}
			return n, nil
		}
	}
}

// Write implements tap.Device: it copies each frame and blocks while the reader's queue is
// full. Frames for a closed peer are dropped and counted, as a real TAP drops frames nobody
// reads.
func (d *Device) Write(bufs [][]byte, offset int) (int, error) {
	var peerDone chan struct{}
	if d.peer != nil {
		peerDone = d.peer.done
	}
	for i, buf := range bufs {
		b := d.get(buf[offset:])
		select {
		case <-d.done:
			d.put(b)
			return i, fmt.Errorf("taptest %s: write: %w", d.name, net.ErrClosed)
		default:
		}
		select {
		case d.out <- b:
		case <-peerDone:
			d.put(b)
			d.dropped.Add(1)
		case <-d.done:
			d.put(b)
			return i, fmt.Errorf("taptest %s: write: %w", d.name, net.ErrClosed)
		}
	}
	return len(bufs), nil
}

func (d *Device) BatchSize() int { return tap.IdealBatchSize }
func (d *Device) MTU() int       { return d.mtu }
func (d *Device) Name() string   { return d.name }

// Close unblocks Read and Write with net.ErrClosed; idempotent.
func (d *Device) Close() error {
	d.close.Do(func() { close(d.done) })
	return nil
}
