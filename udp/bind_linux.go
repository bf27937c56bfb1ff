package udp

// The Linux Bind: sendmmsg and recvmmsg on preallocated headers, entered without the
// runtime's syscall bookkeeping (sendmmsg_linux.go and recvmmsg_linux.go say why), UDP GSO
// (UDP_SEGMENT, kernel >= 4.18) and GRO (UDP_GRO, reliable from 5.12) probed when the
// socket opens.
//
// Sending with GSO needs no copy: a run of equal-sized datagrams becomes one message whose
// iovecs are the caller's buffers. If the kernel answers EIO, the egress device cannot
// checksum-offload UDP, so GSO is switched off for good and the batch resent without it
// (wireguard-go learned this in production).
//
// Receiving with GRO needs buffers large enough for a coalesced burst (up to 64 KiB), which
// callers' MTU-sized buffers are not, so the Bind reads into its own large buffers and copies
// each datagram out. That costs a memcpy per datagram but saves most of the per-datagram
// kernel work.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/weavemesh/weave/internal/logx"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// batchConn sends batches of messages: mmsgConn on a socket, a fake in tests. The message
// type is x/net's (ipv4.Message and ipv6.Message are aliases of it).
type batchConn interface {
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

// groSlots is how many coalesced messages one recvmmsg takes when GRO is on: 8 x 64 KiB
// holds up to 512 datagrams, more than a batch.
const groSlots = 8

// socketBufferSize is the send and receive buffer size the Bind asks for.
const socketBufferSize = 7 << 20

// groBufSize fits the largest coalesced receive.
const groBufSize = 65535

type linuxBind struct {
	conn  *net.UDPConn
	pc    batchConn
	rc    syscall.RawConn
	v6    bool
	local netip.AddrPort
	log   *slog.Logger

	gso atomic.Bool
	gro bool

	closeOnce sync.Once
	closed    atomic.Bool

	// Read side: one reader at a time.
	recv    *receiver
	groBufs [][]byte
	// Datagrams of a GRO message not yet returned: message pm of pn read, at byte offset pOff.
	pm, pn, pOff int

	// Write side: scratch per concurrent writer.
	wpool sync.Pool

	stats struct {
		rxDatagrams, rxMessages, txDatagrams, txMessages, gsoFallbacks atomic.Uint64
	}
}

var (
	_ Bind     = (*linuxBind)(nil)
	_ Offloads = (*linuxBind)(nil)
	_ PathMTU  = (*linuxBind)(nil)

	_ StatsReporter = (*linuxBind)(nil)
)

// writeScratch is one writer's message array and address cache.
type writeScratch struct {
	msgs  []ipv4.Message
	oob   [][]byte
	addrs map[netip.AddrPort]*net.UDPAddr
}

// Listen opens a UDP socket with batching and the offloads the kernel supports.
func Listen(cfg Config) (Bind, error) {
	network, addr := cfg.network()
	conn, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return nil, fmt.Errorf("listen udp %s: %w", addr, err)
	}
	rc, err := conn.SyscallConn()
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("udp %s: raw conn: %w", addr, err)
	}
	b := &linuxBind{
		conn:  conn,
		rc:    rc,
		v6:    network != "udp4",
		local: conn.LocalAddr().(*net.UDPAddr).AddrPort(),
		log:   cfg.logger().With(logx.KeyComponent, "udp"),
	}
	b.pc = newMmsgConn(rc)
	// Bursts of GSO/GRO traffic overrun the default 208 KiB socket buffers: ask for 7 MiB
	// like wireguard-go, forcing past net.core.*mem_max where we may (CAP_NET_ADMIN).
	for _, o := range [][2]int{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
		if setsockoptInt(rc, unix.SOL_SOCKET, o[0], socketBufferSize) != nil {
			_ = setsockoptInt(rc, unix.SOL_SOCKET, o[1], socketBufferSize)
		}
	}
	gsoOK, groOK, why := probeOffloads(rc)
	b.gso.Store(gsoOK && !cfg.DisableGSO)
	b.gro = groOK && !cfg.DisableGRO
	if b.gro {
		if err := setsockoptInt(rc, unix.IPPROTO_UDP, unix.UDP_GRO, 1); err != nil {
			b.gro = false
			why = append(why, "setsockopt UDP_GRO: "+err.Error())
		}
	}
	slots := IdealBatchSize
	if b.gro {
		slots = groSlots
		b.groBufs = make([][]byte, groSlots)
		for i := range b.groBufs {
			b.groBufs[i] = make([]byte, groBufSize)
		}
	}
	oobLen := 0
	if b.gro {
		oobLen = unix.CmsgSpace(4)
	}
	b.recv = newReceiver(rc, slots, oobLen)
	b.wpool.New = func() any {
		ws := &writeScratch{
			msgs:  make([]ipv4.Message, IdealBatchSize),
			oob:   make([][]byte, IdealBatchSize),
			addrs: make(map[netip.AddrPort]*net.UDPAddr),
		}
		for i := range ws.oob {
			ws.oob[i] = make([]byte, unix.CmsgSpace(2))
		}
		return ws
	}
	var offloads []string
	if b.gso.Load() {
		offloads = append(offloads, "gso")
	}
	if b.gro {
		offloads = append(offloads, "gro")
	}
	mode := strings.Join(offloads, "+")
	if mode == "" {
		mode = "no offloads"
	}
	b.log.Info("udp bind listening", logx.KeyAddr, b.local, logx.KeyMode, mode, logx.KeyReason, strings.Join(why, "; "))
	return b, nil
}

// probeOffloads asks the kernel what the socket can do, and says why something is missing.
func probeOffloads(rc syscall.RawConn) (gso, gro bool, why []string) {
	var serr error
	err := rc.Control(func(fd uintptr) {
		_, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT)
	})
	gso = err == nil && serr == nil
	if !gso {
		why = append(why, fmt.Sprintf("no UDP_SEGMENT: %v", errors.Join(err, serr)))
	}
	major, minor := kernelVersion()
	// getsockopt(UDP_GRO) and GRO with some drivers misbehave before 5.12 (wireguard-go c92064f).
	gro = major > 5 || (major == 5 && minor >= 12)
	if !gro {
		why = append(why, fmt.Sprintf("kernel %d.%d < 5.12: no UDP GRO", major, minor))
	}
	return gso, gro, why
}

func kernelVersion() (major, minor int) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return 0, 0
	}
	rel := unix.ByteSliceToString(u.Release[:])
	parts := strings.SplitN(rel, ".", 3)
	if len(parts) < 2 {
		return 0, 0
	}
	major, _ = strconv.Atoi(parts[0])
	minor, _ = strconv.Atoi(strings.TrimFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	return major, minor
}

func setsockoptInt(rc syscall.RawConn, level, opt, v int) error {
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), level, opt, v) }); err != nil {
		return err
	}
	return serr
}

func (b *linuxBind) Stats() Stats {
	return Stats{
		RxDatagrams: b.stats.rxDatagrams.Load(), RxMessages: b.stats.rxMessages.Load(),
		TxDatagrams: b.stats.txDatagrams.Load(), TxMessages: b.stats.txMessages.Load(),
		GSOFallbacks: b.stats.gsoFallbacks.Load(),
	}
}

func (b *linuxBind) GSOActive() bool           { return b.gso.Load() }
func (b *linuxBind) GROActive() bool           { return b.gro }
func (b *linuxBind) BatchSize() int            { return IdealBatchSize }
func (b *linuxBind) LocalAddr() netip.AddrPort { return b.local }

func (b *linuxBind) Close() error {
	var err error
	b.closeOnce.Do(func() {
		b.closed.Store(true)
		err = b.conn.Close()
	})
	return err
}

func (b *linuxBind) wrapErr(op string, err error) error {
	if b.closed.Load() || errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("udp %s %s: %w", op, b.local, net.ErrClosed)
	}
	return fmt.Errorf("udp %s %s: %w", op, b.local, err)
}

func (b *linuxBind) ReadBatch(bufs [][]byte, sizes []int, eps []netip.AddrPort) (int, error) {
	if b.closed.Load() {
		return 0, b.wrapErr("read", net.ErrClosed)
	}
	if len(bufs) == 0 {
		return 0, nil
	}
	r := b.recv
	if !b.gro {
		n, err := r.recv(bufs)
		if err != nil {
			return 0, b.wrapErr("read", err)
		}
		for i := 0; i < n; i++ {
			sizes[i], eps[i] = r.size(i), r.from(i)
		}
		b.stats.rxMessages.Add(uint64(n))
		b.stats.rxDatagrams.Add(uint64(n))
		return n, nil
	}
	if b.pm >= b.pn {
		n, err := r.recv(b.groBufs)
		if err != nil {
			return 0, b.wrapErr("read", err)
		}
		b.pm, b.pn, b.pOff = 0, n, 0
		b.stats.rxMessages.Add(uint64(n))
	}
	n := 0
	for n < len(bufs) && b.pm < b.pn {
		size := r.size(b.pm)
		seg := groSize(r.oob(b.pm))
		if seg <= 0 {
			seg = size
		}
		end := min(b.pOff+seg, size)
		sizes[n] = copy(bufs[n], b.groBufs[b.pm][b.pOff:end])
		eps[n] = r.from(b.pm)
		n++
		b.pOff = end
		if b.pOff >= size {
			b.pm++
			b.pOff = 0
		}
	}
	b.stats.rxDatagrams.Add(uint64(n))
	return n, nil
}

// groSize finds the UDP_GRO control message (the segment size of a coalesced receive)
// without allocating, as unix.ParseSocketControlMessage would.
func groSize(oob []byte) int {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafePointer(oob))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(oob) {
			return 0
		}
		if h.Level == unix.IPPROTO_UDP && h.Type == unix.UDP_GRO && l >= unix.CmsgLen(4) {
			return int(binary.NativeEndian.Uint32(oob[unix.CmsgLen(0):]))
		}
		oob = oob[min(unix.CmsgSpace(l-unix.SizeofCmsghdr), len(oob)):]
	}
	return 0
}

// putSegmentCmsg writes a UDP_SEGMENT control message carrying size into oob.
func putSegmentCmsg(oob []byte, size uint16) []byte {
	oob = oob[:unix.CmsgSpace(2)]
	clear(oob)
	h := (*unix.Cmsghdr)(unsafePointer(oob))
	h.Level = unix.IPPROTO_UDP
	h.Type = unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(oob[unix.CmsgLen(0):], size)
	return oob
}

func (b *linuxBind) udpAddr(ws *writeScratch, ep netip.AddrPort) *net.UDPAddr {
	if a, ok := ws.addrs[ep]; ok {
		return a
	}
	if len(ws.addrs) >= 1024 {
		clear(ws.addrs) // a bound, not an LRU: the hot peers come straight back
	}
	a := net.UDPAddrFromAddrPort(ep)
	ws.addrs[ep] = a
	return a
}

func (b *linuxBind) WriteBatch(bufs [][]byte, ep netip.AddrPort) error {
	if b.closed.Load() {
		return b.wrapErr("write", net.ErrClosed)
	}
	if !b.v6 && !ep.Addr().Unmap().Is4() {
		return fmt.Errorf("udp write from %s to %s: ipv6 destination on an ipv4 socket", b.local, ep)
	}
	if !b.v6 {
		ep = netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port())
	}
	ws := b.wpool.Get().(*writeScratch)
	defer b.wpool.Put(ws)
	addr := b.udpAddr(ws, ep)
	for len(bufs) > 0 {
		gso := b.gso.Load()
		msgs, used := b.pack(ws, bufs, addr, gso)
		err := b.send(msgs)
		if err != nil && gso && errors.Is(err, unix.EIO) {
			b.gso.Store(false)
			b.stats.gsoFallbacks.Add(1)
			b.log.Warn("udp gso refused by the kernel (egress device lacks checksum offload), disabling it", logx.KeyErr, err)
			continue // repack this chunk without GSO
		}
		if err != nil {
			return b.wrapErr("write to "+ep.String(), err)
		}
		b.stats.txMessages.Add(uint64(len(msgs)))
		b.stats.txDatagrams.Add(uint64(used))
		bufs = bufs[used:]
	}
	return nil
}

// pack fills ws.msgs from the front of bufs and returns the messages and how many datagrams
// they carry.
func (b *linuxBind) pack(ws *writeScratch, bufs [][]byte, addr *net.UDPAddr, gso bool) ([]ipv4.Message, int) {
	k, i := 0, 0
	for i < len(bufs) && k < len(ws.msgs) {
		m := &ws.msgs[k]
		m.Addr, m.OOB = addr, nil
		if !gso {
			m.Buffers = bufs[i : i+1]
			i++
			k++
			continue
		}
		size := len(bufs[i])
		j, total := i+1, size
		for j < len(bufs) && j-i < MaxSegments && total+len(bufs[j]) <= MaxDatagramSize &&
			len(bufs[j]) <= size && len(bufs[j-1]) == size {
			total += len(bufs[j])
			j++
		}
		m.Buffers = bufs[i:j]
		if j-i > 1 {
			m.OOB = putSegmentCmsg(ws.oob[k], uint16(size))
		}
		i = j
		k++
	}
	return ws.msgs[:k], i
}

// send writes all msgs, retrying after partial sends.
func (b *linuxBind) send(msgs []ipv4.Message) error {
	defer func() {
		for i := range msgs {
			msgs[i].Buffers, msgs[i].Addr = nil, nil // do not keep the caller's buffers alive
		}
	}()
	for len(msgs) > 0 {
		n, err := b.pc.WriteBatch(msgs, 0)
		if err != nil {
			return err
		}
		msgs = msgs[n:]
	}
	return nil
}

func (b *linuxBind) SetDontFragment(on bool) error {
	var err error
	if b.v6 {
		mode, df := unix.IPV6_PMTUDISC_DONT, 0
		if on {
			mode, df = unix.IPV6_PMTUDISC_DO, 1
		}
		err = errors.Join(setsockoptInt(b.rc, unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, mode),
			setsockoptInt(b.rc, unix.IPPROTO_IPV6, unix.IPV6_DONTFRAG, df))
		// A dual-stack socket sends IPv4 too.
		if !on {
			err = errors.Join(err, setsockoptInt(b.rc, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DONT))
		} else {
			err = errors.Join(err, setsockoptInt(b.rc, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO))
		}
	} else {
		mode := unix.IP_PMTUDISC_DONT
		if on {
			mode = unix.IP_PMTUDISC_DO
		}
		err = setsockoptInt(b.rc, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, mode)
	}
	if err != nil {
		return fmt.Errorf("udp %s: set don't-fragment %v: %w", b.local, on, err)
	}
	return nil
}

// PathMTU connects a throwaway socket to dst, because IP_MTU is only defined on connected
// sockets; the answer comes from the route and its PMTU exception, shared by all sockets.
func (b *linuxBind) PathMTU(dst netip.AddrPort) (int, error) {
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	family, level, opt := unix.AF_INET, unix.IPPROTO_IP, unix.IP_MTU
	var sa unix.Sockaddr = &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
	if dst.Addr().Is6() {
		family, level, opt = unix.AF_INET6, unix.IPPROTO_IPV6, unix.IPV6_MTU
		sa = &unix.SockaddrInet6{Port: int(dst.Port()), Addr: dst.Addr().As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("path mtu to %s: socket: %w", dst, err)
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, sa); err != nil {
		return 0, fmt.Errorf("path mtu to %s: connect: %w", dst, err)
	}
	mtu, err := unix.GetsockoptInt(fd, level, opt)
	if err != nil {
		return 0, fmt.Errorf("path mtu to %s: %w", dst, err)
	}
	return mtu, nil
}
