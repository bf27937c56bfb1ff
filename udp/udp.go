package udp

import (
	"log/slog"
	"net/netip"
)

// Bind is the wire side of the data plane: one UDP socket carrying batches of datagrams.
//
// Buffers belong to the caller and are not retained after a call returns. One goroutine at a
// time may call ReadBatch; WriteBatch may be called from several goroutines at once.
// BatchSize is fixed for the life of the Bind.
type Bind interface {
	// ReadBatch blocks until at least one datagram arrives, then reads up to len(bufs):
	// datagram i is copied to bufs[i][:sizes[i]], and eps[i] is its sender (IPv4 senders
	// as plain IPv4 addresses, never v4-mapped). With UDP GRO active, one coalesced receive is
	// split into its datagrams; datagrams that do not fit in bufs are returned by the next
	// call. A datagram longer than its buffer is truncated by the kernel, so buffers should
	// hold the largest datagram the protocol sends. After Close it returns an error wrapping
	// net.ErrClosed.
	ReadBatch(bufs [][]byte, sizes []int, eps []netip.AddrPort) (n int, err error)

	// WriteBatch sends each of bufs as one datagram to ep, in order. With UDP GSO active,
	// runs of equal-sized datagrams (the last of a run may be shorter) go to the kernel as
	// one message with UDP_SEGMENT, without copying. An error may leave a prefix sent; it
	// wraps syscall.EMSGSIZE when don't-fragment is on and a datagram exceeds the path MTU,
	// and net.ErrClosed after Close.
	WriteBatch(bufs [][]byte, ep netip.AddrPort) error

	// BatchSize is the number of buffers ReadBatch wants to be offered.
	BatchSize() int
	// LocalAddr is the address the socket is bound to (with the actual port if Config
	// asked for port 0).
	LocalAddr() netip.AddrPort
	// Close closes the socket; idempotent. A blocked ReadBatch returns net.ErrClosed.
	Close() error
}

// Offloads is implemented by Binds that can use UDP segmentation/receive offloads. The
// answers can change from true to false at run time: GSO is switched off for good when the
// kernel reports that the egress device cannot do it.
type Offloads interface {
	GSOActive() bool
	GROActive() bool
}

// PathMTU is implemented by Binds that support path MTU discovery, which the sleeve needs
// to size its datagrams.
type PathMTU interface {
	// SetDontFragment sets or clears the don't-fragment bit on everything the Bind sends
	// (IP_MTU_DISCOVER=IP_PMTUDISC_DO, IPV6_DONTFRAG). With it on, a datagram larger than
	// the path MTU is refused with EMSGSIZE instead of being fragmented.
	SetDontFragment(on bool) error
	// PathMTU returns the kernel's current path MTU towards dst (IP_MTU), which includes
	// what ICMP "fragmentation needed"/"packet too big" taught it. It is an IP MTU:
	// subtract 28 (IPv4) or 48 (IPv6) for the largest UDP payload.
	PathMTU(dst netip.AddrPort) (int, error)
}

const (
	// IdealBatchSize is how many datagrams the data plane should pass per call.
	IdealBatchSize = 128
	// MaxSegments is the most datagrams one GSO send carries (the kernel's UDP_MAX_SEGMENTS
	// is 64 on older kernels and 128 on newer ones).
	MaxSegments = 64
	// MaxDatagramSize is the largest UDP payload over IPv4.
	MaxDatagramSize = 65535 - 20 - 8
)

// Config configures Listen.
type Config struct {
	// Addr is the local address and port, e.g. 0.0.0.0:6783 (IPv4 only), [::]:6783 (IPv6
	// and, dual-stack, IPv4), or a specific address. The zero value means 0.0.0.0:0.
	Addr netip.AddrPort
	// DisableGSO and DisableGRO turn the offloads off even where the kernel has them.
	DisableGSO, DisableGRO bool
	// Logger receives the Bind's logs; nil discards them.
	Logger *slog.Logger
}

func (c *Config) logger() *slog.Logger {
	if c.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Logger
}

func (c *Config) network() (string, netip.AddrPort) {
	addr := c.Addr
	if !addr.Addr().IsValid() {
		addr = netip.AddrPortFrom(netip.IPv4Unspecified(), addr.Port())
	}
	if addr.Addr().Is4() || addr.Addr().Is4In6() {
		return "udp4", netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	}
	if addr.Addr().IsUnspecified() {
		return "udp", addr // Go makes "udp6" on [::] v6-only; "udp" is the dual-stack socket
	}
	return "udp6", addr
}

// StatsReporter is implemented by the Linux Bind.
type StatsReporter interface {
	Stats() Stats
}

// Stats counts what a Bind did; counters only grow. Fewer messages than datagrams means the
// offloads work.
type Stats struct {
	RxDatagrams, RxMessages uint64 // datagrams returned by ReadBatch; recvmmsg messages they came in
	TxDatagrams, TxMessages uint64 // datagrams sent; sendmmsg messages they went out in
	GSOFallbacks            uint64 // times the kernel refused GSO and it was switched off
}
