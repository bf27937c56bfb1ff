package udp

// recvmmsg(2) without x/net: ipv4.PacketConn.ReadBatch allocates a *net.UDPAddr (and its IP
// slice) for every message it returns, two allocations per datagram whenever receives are
// not GRO-coalesced, which is the common case for traffic from many peers. Reading the
// sender straight out of a preallocated sockaddr keeps the receive path allocation-free.
//
// The call is a RawSyscall6, like sendmmsg's (sendmmsg_linux.go says why): the socket is
// non-blocking, so recvmmsg returns at once, and skipping entersyscall spares the wake-up of
// a sleeping sysmon on the first datagram after an idle spell, on the path of every ping.

import (
	"encoding/binary"
	"net/netip"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// receiver is the reader's preallocated recvmmsg state; one goroutine uses it at a time.
type receiver struct {
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6 // large enough for either family
	oobs  [][]byte

	rc     syscall.RawConn
	count  int // messages to ask for
	n      int // messages received
	errno  syscall.Errno
	readFn func(fd uintptr) bool // bound once: no closure allocation per call
}

func newReceiver(rc syscall.RawConn, slots, oobLen int) *receiver {
	r := &receiver{
		hdrs:  make([]unix.Mmsghdr, slots),
		iovs:  make([]unix.Iovec, slots),
		names: make([]unix.RawSockaddrInet6, slots),
		oobs:  make([][]byte, slots),
		rc:    rc,
	}
	for i := range r.hdrs {
		if oobLen > 0 {
			r.oobs[i] = make([]byte, oobLen)
		}
	}
	r.readFn = r.rawRecv
	return r
}

// rawRecv runs inside the poller: one recvmmsg; returning false parks the reader until the
// socket is readable.
func (r *receiver) rawRecv(fd uintptr) bool {
	for {
		n, _, errno := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.hdrs[0])), uintptr(r.count), 0, 0, 0)
		switch errno {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		r.n, r.errno = int(n), errno
		return true
	}
}

// recv reads up to len(bufs) datagrams into bufs (at most the receiver's slots).
func (r *receiver) recv(bufs [][]byte) (int, error) {
	k := min(len(bufs), len(r.hdrs))
	for i := 0; i < k; i++ {
		h := &r.hdrs[i]
		*h = unix.Mmsghdr{}
		if len(bufs[i]) > 0 {
			r.iovs[i].Base = &bufs[i][0]
		}
		r.iovs[i].SetLen(len(bufs[i]))
		h.Hdr.Iov = &r.iovs[i]
		h.Hdr.SetIovlen(1)
		h.Hdr.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		h.Hdr.Namelen = unix.SizeofSockaddrInet6
		if len(r.oobs[i]) > 0 {
			h.Hdr.Control = &r.oobs[i][0]
			h.Hdr.SetControllen(len(r.oobs[i]))
		}
	}
	r.count = k
	err := r.rc.Read(r.readFn)
	runtime.KeepAlive(bufs)
	for i := 0; i < k; i++ {
		r.iovs[i].Base = nil // do not keep the caller's buffers alive
	}
	if err != nil {
		return 0, err
	}
	if r.errno != 0 {
		return 0, r.errno
	}
	return r.n, nil
}

// size is the length of message i, oob its control data.
func (r *receiver) size(i int) int { return int(r.hdrs[i].Len) }

func (r *receiver) oob(i int) []byte {
	return r.oobs[i][:min(int(r.hdrs[i].Hdr.Controllen), len(r.oobs[i]))]
}

// from decodes the sender of message i; IPv4-mapped addresses are unmapped.
func (r *receiver) from(i int) netip.AddrPort {
	sa := &r.names[i]
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa4.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port)
	case unix.AF_INET6:
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port)
	}
	return netip.AddrPort{}
}
