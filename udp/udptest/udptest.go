package udptest

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/weavemesh/weave/udp"
)

// DefaultMTU is the path MTU between binds unless SetPathMTU says otherwise.
const DefaultMTU = 1500

// Network is an in-memory underlay: binds attached to it exchange datagrams by address,
// with per-direction loss, blocking and path MTU that tests can change at any time, and
// counters of what went where. It is safe for concurrent use.
type Network struct {
	mu    sync.Mutex
	binds map[netip.AddrPort]*Bind
	links map[link]*linkState
	rng   *rand.Rand

	free chan []byte // recycled datagram buffers
}

type link struct{ from, to netip.AddrPort }

type linkState struct {
	loss      float64
	blocked   bool
	mtu       int
	delivered uint64
	dropped   uint64
}

// NewNetwork returns an empty network; seed makes loss reproducible.
func NewNetwork(seed uint64) *Network {
	return &Network{
		binds: make(map[netip.AddrPort]*Bind),
		links: make(map[link]*linkState),
		rng:   rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		free:  make(chan []byte, 4096),
	}
}

// NewPair returns two binds on a fresh network, at 192.0.2.1:6783 and 192.0.2.2:6783.
func NewPair() (a, b *Bind) {
	n := NewNetwork(1)
	a, _ = n.NewBind(netip.MustParseAddrPort("192.0.2.1:6783"))
	b, _ = n.NewBind(netip.MustParseAddrPort("192.0.2.2:6783"))
	return a, b
}

// NewBind attaches a bind at addr; the address must be free.
func (n *Network) NewBind(addr netip.AddrPort) (*Bind, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.binds[addr]; ok {
		return nil, fmt.Errorf("udptest: %s: %w", addr, syscall.EADDRINUSE)
	}
	b := &Bind{net: n, local: addr, in: make(chan datagram, 4096), done: make(chan struct{})}
	n.binds[addr] = b
	return b, nil
}

// linkLocked returns the state of from->to, creating it. Must hold n.mu.
func (n *Network) linkLocked(from, to netip.AddrPort) *linkState {
	l, ok := n.links[link{from, to}]
	if !ok {
		l = &linkState{mtu: DefaultMTU}
		n.links[link{from, to}] = l
	}
	return l
}

// SetLoss makes datagrams from -> to get lost with probability p (0..1).
func (n *Network) SetLoss(from, to netip.AddrPort, p float64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.linkLocked(from, to).loss = p
}

// Block drops everything from -> to (one direction) until Unblock.
func (n *Network) Block(from, to netip.AddrPort) { n.setBlocked(from, to, true) }

// Unblock undoes Block.
func (n *Network) Unblock(from, to netip.AddrPort) { n.setBlocked(from, to, false) }

func (n *Network) setBlocked(from, to netip.AddrPort, v bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.linkLocked(from, to).blocked = v
}

// SetPathMTU sets the IP MTU of from -> to, reported by PathMTU and enforced on datagrams
// sent with don't-fragment (28 bytes of IPv4+UDP header are counted).
func (n *Network) SetPathMTU(from, to netip.AddrPort, mtu int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.linkLocked(from, to).mtu = mtu
}

// Counts returns how many datagrams from -> to were delivered and dropped (loss, blocking,
// no bind at the destination, too big for the buffer).
func (n *Network) Counts(from, to netip.AddrPort) (delivered, dropped uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	l := n.linkLocked(from, to)
	return l.delivered, l.dropped
}

// bufSize is the capacity of recycled buffers; larger datagrams get their own.
const bufSize = 2048

func (n *Network) get(b []byte) []byte {
	var buf []byte
	select {
	case buf = <-n.free:
	default:
		buf = make([]byte, 0, max(bufSize, len(b)))
	}
	return append(buf[:0], b...)
}

func (n *Network) put(b []byte) {
	if cap(b) != bufSize {
		return
	}
	select {
	case n.free <- b:
	default:
	}
}

type datagram struct {
	buf  []byte
	from netip.AddrPort
}

// Bind is an in-memory udp.Bind on a Network.
type Bind struct {
	net   *Network
	local netip.AddrPort
	in    chan datagram
	done  chan struct{}
	close sync.Once
	df    atomic.Bool
}

var (
	_ udp.Bind    = (*Bind)(nil)
	_ udp.PathMTU = (*Bind)(nil)
)

// ReadBatch implements udp.Bind: it blocks for one datagram, then takes what else is queued.
func (b *Bind) ReadBatch(bufs [][]byte, sizes []int, eps []netip.AddrPort) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	var d datagram
	select {
	case <-b.done:
		return 0, fmt.Errorf("udptest %s: read: %w", b.local, net.ErrClosed)
	case d = <-b.in:
	}
	n := 0
	for {
		sizes[n] = copy(bufs[n], d.buf) // truncated like a real socket when the buffer is short
		eps[n] = d.from
		n++
		b.net.put(d.buf)
		if n == len(bufs) {
			return n, nil
		}
		select {
		case d = <-b.in:
		default:
			return n, nil
		}
	}
}

// WriteBatch implements udp.Bind. Datagrams to an address with no bind, or on a lossy or
// blocked link, vanish as on a real network (and are counted); delivery blocks while the
// receiver's queue is full, so tests do not lose datagrams to scheduling.
func (b *Bind) WriteBatch(bufs [][]byte, ep netip.AddrPort) error {
	select {
	case <-b.done:
		return fmt.Errorf("udptest %s: write: %w", b.local, net.ErrClosed)
	default:
	}
	n := b.net
	n.mu.Lock()
	dst := n.binds[ep]
	l := n.linkLocked(b.local, ep)
	// Decide every datagram's fate under the lock, then deliver without it.
	var tooBig error
	for i := 0; i < len(bufs) && tooBig == nil; i += 64 {
		var keep uint64 // bitmask over up to 64 datagrams at a time
		chunk := bufs[i:min(i+64, len(bufs))]
		for j, buf := range chunk {
			if b.df.Load() && len(buf)+28 > l.mtu {
				// Like sendmmsg: the prefix goes out, the rest is refused.
				tooBig = fmt.Errorf("udptest %s: write %d bytes to %s (path mtu %d): %w", b.local, len(buf), ep, l.mtu, syscall.EMSGSIZE)
				chunk = chunk[:j]
				break
			}
			if dst == nil || l.blocked || (l.loss > 0 && n.rng.Float64() < l.loss) {
				l.dropped++
				continue
			}
			l.delivered++
			keep |= 1 << j
		}
		n.mu.Unlock()
		for j, buf := range chunk {
			if keep&(1<<j) == 0 {
				continue
			}
			select {
			case dst.in <- datagram{buf: n.get(buf), from: b.local}:
			case <-dst.done: // gone: the datagram is lost
			case <-b.done:
				return fmt.Errorf("udptest %s: write: %w", b.local, net.ErrClosed)
			}
		}
		n.mu.Lock()
	}
	n.mu.Unlock()
	return tooBig
}

func (b *Bind) BatchSize() int            { return udp.IdealBatchSize }
func (b *Bind) LocalAddr() netip.AddrPort { return b.local }

// SetDontFragment implements udp.PathMTU: with it on, datagrams larger than the path MTU
// fail with EMSGSIZE.
func (b *Bind) SetDontFragment(on bool) error {
	b.df.Store(on)
	return nil
}

// PathMTU implements udp.PathMTU with the MTU set by Network.SetPathMTU.
func (b *Bind) PathMTU(dst netip.AddrPort) (int, error) {
	b.net.mu.Lock()
	defer b.net.mu.Unlock()
	return b.net.linkLocked(b.local, dst).mtu, nil
}

// Close detaches the bind from its network and unblocks its calls; idempotent.
func (b *Bind) Close() error {
	b.close.Do(func() {
		b.net.mu.Lock()
		if b.net.binds[b.local] == b {
			delete(b.net.binds, b.local)
		}
		b.net.mu.Unlock()
		close(b.done)
	})
	return nil
}
