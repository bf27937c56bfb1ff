package netdev

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// InNamespace runs fn with the calling goroutine's thread switched into ns: netlink
// requests and sockets made by fn belong to ns (sockets stay there after the thread
// switches back). If the thread cannot be switched back it is not unlocked, so Go retires
// it instead of reusing a thread in the wrong namespace.
func InNamespace(ns netns.NsHandle, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("current namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter namespace: %w", err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		return fmt.Errorf("return to namespace: %w", err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// Htons puts a 16-bit value (an EtherType) in network byte order, as AF_PACKET takes it.
func Htons(v uint16) uint16 { return v<<8 | v>>8 }

// PacketSocket opens a raw, non-blocking AF_PACKET socket in the caller's namespace (run it
// inside InNamespace for another) that is bound to the interface ifindex and receives only
// etherType: heartbeats and test frames, never the data frames of other EtherTypes.
func PacketSocket(ifindex int, etherType uint16, name string) (*os.File, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, int(Htons(etherType)))
	if err != nil {
		return nil, fmt.Errorf("packet socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: Htons(etherType), Ifindex: ifindex}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind packet socket to interface %d: %w", ifindex, err)
	}
	return os.NewFile(uintptr(fd), name), nil
}

// IsNotFound reports whether err is netlink's "no such link".
func IsNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

// DeleteLink deletes the link name through h (nil: in the caller's namespace); a veth takes
// its peer with it. A link that is missing, or gone before the delete, is not an error.
func DeleteLink(h *netlink.Handle, name string) error {
	if h == nil {
		h = &netlink.Handle{}
	}
	link, err := h.LinkByName(name)
	if err != nil {
		if IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if err := h.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}
