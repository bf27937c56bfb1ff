package udp

// sendmmsg(2) without x/net, for latency rather than allocations: x/net enters the syscall
// through syscall.Syscall6, and the runtime's entersyscall wakes sysmon whenever it sleeps
// because every P was idle. On an idle path (a ping every 20 ms) that is every datagram: a
// futex wake and a context switch of the sysmon thread on the critical path of each hop,
// then sysmon polling every 20 us for a millisecond, competing for the same CPUs. The socket
// is non-blocking, so the call cannot block, and RawSyscall6 (which skips entersyscall) is
// safe: a full socket buffer returns EAGAIN, and we wait in the poller like x/net does.
//
// Measured on the 2-vCPU bench VM (medians of 8 interleaved runs of 150 pings): sleeve ping
// p50 0.370 -> 0.344 ms with this, the raw recvmmsg and the raw TAP read; 0.310 ms once the
// TAP write is raw too. The ping's scheduler trace no longer shows sysmon wake-ups.

import (
	"encoding/binary"
	"net"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// mmsgConn is a batchConn sending with raw sendmmsg on the socket behind rc.
type mmsgConn struct {
	rc   syscall.RawConn
	pool sync.Pool // *mmsgScratch, one per concurrent writer
}

var _ batchConn = (*mmsgConn)(nil)

// mmsgScratch is one WriteBatch call's kernel view of its messages.
type mmsgScratch struct {
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6 // large enough for either family
	count int
	n     int
	errno syscall.Errno
	fn    func(fd uintptr) bool // bound once: no closure allocation per call
}

func newMmsgConn(rc syscall.RawConn) *mmsgConn {
	c := &mmsgConn{rc: rc}
	c.pool.New = func() any {
		s := &mmsgScratch{}
		s.fn = s.rawSend
		return s
	}
	return c
}

func (s *mmsgScratch) rawSend(fd uintptr) bool {
	n, _, errno := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&s.hdrs[0])), uintptr(s.count), 0, 0, 0)
	if errno == unix.EAGAIN || errno == unix.EINTR {
		return false // wait for room in the socket buffer (or retry after a signal)
	}
	s.n, s.errno = int(n), errno
	return true
}

// WriteBatch sends ms like ipv4.PacketConn.WriteBatch: it returns how many messages the
// kernel took, which may be fewer than len(ms).
func (c *mmsgConn) WriteBatch(ms []ipv4.Message, flags int) (int, error) {
	if len(ms) == 0 {
		return 0, nil
	}
	s := c.pool.Get().(*mmsgScratch)
	defer c.pool.Put(s)
	iovs := 0
	for i := range ms {
		iovs += len(ms[i].Buffers)
	}
	if cap(s.hdrs) < len(ms) {
		s.hdrs = make([]unix.Mmsghdr, len(ms))
		s.names = make([]unix.RawSockaddrInet6, len(ms))
	}
	if cap(s.iovs) < iovs {
		s.iovs = make([]unix.Iovec, iovs)
	}
	s.hdrs, s.names, s.iovs = s.hdrs[:len(ms)], s.names[:len(ms)], s.iovs[:iovs]
	iv := 0
	var lastAddr net.Addr
	var lastName *unix.RawSockaddrInet6
	var lastLen uint32
	for i := range ms {
		m := &ms[i]
		h := &s.hdrs[i]
		*h = unix.Mmsghdr{}
		first := iv
		for _, b := range m.Buffers {
			s.iovs[iv] = unix.Iovec{}
			if len(b) > 0 {
				s.iovs[iv].Base = &b[0]
			}
			s.iovs[iv].SetLen(len(b))
			iv++
		}
		if iv > first {
			h.Hdr.Iov = &s.iovs[first]
			h.Hdr.SetIovlen(iv - first)
		}
		// WriteBatch of a Bind sends every message to one address: convert it once.
		if m.Addr != lastAddr || lastName == nil {
			lastAddr, lastName = m.Addr, &s.names[i]
			var err error
			if lastLen, err = putSockaddr(lastName, m.Addr); err != nil {
				s.clear(iv)
				return 0, err
			}
		}
		h.Hdr.Name = (*byte)(unsafe.Pointer(lastName))
		h.Hdr.Namelen = lastLen
		if len(m.OOB) > 0 {
			h.Hdr.Control = &m.OOB[0]
			h.Hdr.SetControllen(len(m.OOB))
		}
	}
	s.count = len(ms)
	err := c.rc.Write(s.fn)
	runtime.KeepAlive(ms)
	s.clear(iv)
	if err != nil {
		return 0, err
	}
	if s.errno != 0 {
		return 0, s.errno
	}
	return s.n, nil
}

// clear drops the scratch's pointers into the caller's buffers, which must not stay alive
// (or be reachable from a pooled object) after the call.
func (s *mmsgScratch) clear(iovs int) {
	for i := range iovs {
		s.iovs[i].Base = nil
	}
	for i := range s.hdrs {
		s.hdrs[i].Hdr.Iov, s.hdrs[i].Hdr.Control = nil, nil
	}
}

// putSockaddr writes a as a sockaddr into sa and returns its length: AF_INET for an IPv4
// (or v4-mapped) address, which Linux also takes on a dual-stack AF_INET6 socket, as x/net
// does; AF_INET6 otherwise.
func putSockaddr(sa *unix.RawSockaddrInet6, a net.Addr) (uint32, error) {
	ua, ok := a.(*net.UDPAddr)
	if !ok || ua == nil {
		return 0, &net.AddrError{Err: "not a UDP address", Addr: addrString(a)}
	}
	ap := ua.AddrPort()
	*sa = unix.RawSockaddrInet6{}
	port := (*[2]byte)(unsafe.Pointer(&sa.Port))
	binary.BigEndian.PutUint16(port[:], ap.Port())
	if ip := ap.Addr(); ip.Unmap().Is4() {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		sa4.Family = unix.AF_INET
		sa4.Addr = ip.Unmap().As4()
		return unix.SizeofSockaddrInet4, nil
	}
	sa.Family = unix.AF_INET6
	sa.Addr = ap.Addr().As16()
	if z := ap.Addr().Zone(); z != "" {
		id, err := zoneIndex(z)
		if err != nil {
			return 0, err
		}
		sa.Scope_id = id
	}
	return unix.SizeofSockaddrInet6, nil
}

func zoneIndex(zone string) (uint32, error) {
	if n, err := strconv.ParseUint(zone, 10, 32); err == nil {
		return uint32(n), nil
	}
	ifi, err := net.InterfaceByName(zone)
	if err != nil {
		return 0, err
	}
	return uint32(ifi.Index), nil
}

func addrString(a net.Addr) string {
	if a == nil {
		return "<nil>"
	}
	return a.String()
}
