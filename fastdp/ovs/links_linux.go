package ovs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"unsafe"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"github.com/weavemesh/weave/internal/netdev"
	"golang.org/x/sys/unix"
)

// NetlinkLinks manages the Linux side of local ports through netlink (and the ethtool ioctl)
// in one network namespace.
type NetlinkLinks struct {
	ns string // path; "" for the caller's namespace
	h  *netlink.Handle
}

// NewNetlinkLinks works in the namespace at nsPath (a path, or a name under /var/run/netns;
// "" for the caller's own). Close it.
func NewNetlinkLinks(nsPath string) (*NetlinkLinks, error) {
	if nsPath == "" {
		h, err := netlink.NewHandle()
		if err != nil {
			return nil, fmt.Errorf("ovs: netlink handle: %w", err)
		}
		return &NetlinkLinks{h: h}, nil
	}
	if !strings.Contains(nsPath, "/") {
		nsPath = filepath.Join("/var/run/netns", nsPath)
	}
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, fmt.Errorf("ovs: open netns %s: %w", nsPath, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("ovs: netlink handle in %s: %w", nsPath, err)
	}
	return &NetlinkLinks{ns: nsPath, h: h}, nil
}

// DeleteLink deletes the device name (a veth takes its peer with it); a missing one is fine.
func (l *NetlinkLinks) DeleteLink(name string) error { return netdev.DeleteLink(l.h, name) }

// Uplink creates (or completes) the veth pair ovsEnd <-> bridgeEnd: bridgeEnd becomes an
// isolated port of the Linux bridge (like fastdp's VXLAN device, so frames from OVS never
// reach the router's equally isolated TAP, and frames the router injects never leave through
// OVS); both ends take mtu (0: the bridge's), come up, and have TX checksum offload off,
// because the userspace datapath reads frames from ovsEnd as they are and never completes
// a partial checksum: with offload off the kernel finishes it when the frame crosses the
// veth, so containers on the Linux bridge keep their offloads.
func (l *NetlinkLinks) Uplink(bridge, ovsEnd, bridgeEnd string, mtu int) error {
	br, err := l.h.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("ovs: uplink: bridge %s: %w", bridge, err)
	}
	if mtu <= 0 {
		mtu = br.Attrs().MTU
	}
	if _, err := l.h.LinkByName(ovsEnd); err != nil {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: ovsEnd, MTU: mtu}, PeerName: bridgeEnd, PeerMTU: uint32(mtu)}
		if err := l.h.LinkAdd(v); err != nil {
			return fmt.Errorf("ovs: uplink: add veth %s/%s: %w", ovsEnd, bridgeEnd, err)
		}
	}
	for _, name := range []string{ovsEnd, bridgeEnd} {
		link, err := l.h.LinkByName(name)
		if err != nil {
			return fmt.Errorf("ovs: uplink: %s: %w", name, err)
		}
		if link.Attrs().MTU != mtu {
			if err := l.h.LinkSetMTU(link, mtu); err != nil {
				return fmt.Errorf("ovs: uplink: mtu of %s: %w", name, err)
			}
		}
		if name == bridgeEnd {
			if err := l.h.LinkSetMaster(link, br); err != nil {
				return fmt.Errorf("ovs: uplink: %s into %s: %w", name, bridge, err)
			}
			if err := l.h.LinkSetIsolated(link, true); err != nil {
				return fmt.Errorf("ovs: uplink: isolate %s: %w", name, err)
			}
		}
		if err := l.txChecksumOff(name); err != nil {
			return err
		}
		if err := l.h.LinkSetUp(link); err != nil {
			return fmt.Errorf("ovs: uplink: up %s: %w", name, err)
		}
	}
	return nil
}

// Pair creates (or completes) the veth pair ovsEnd <-> hostEnd, both ends with mtu and up.
// IPv6 is off on hostEnd, so the kernel sends nothing of its own (router solicitations)
// through it.
func (l *NetlinkLinks) Pair(ovsEnd, hostEnd string, mtu int) error {
	if _, err := l.h.LinkByName(ovsEnd); err != nil {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: ovsEnd, MTU: mtu}, PeerName: hostEnd, PeerMTU: uint32(mtu)}
		if err := l.h.LinkAdd(v); err != nil {
			return fmt.Errorf("ovs: add veth %s/%s: %w", ovsEnd, hostEnd, err)
		}
	}
	_ = l.inNetns(func() error {
		return os.WriteFile(filepath.Join("/proc/sys/net/ipv6/conf", hostEnd, "disable_ipv6"), []byte("1"), 0o644)
	})
	for _, name := range []string{ovsEnd, hostEnd} {
		link, err := l.h.LinkByName(name)
		if err != nil {
			return fmt.Errorf("ovs: %s: %w", name, err)
		}
		if link.Attrs().MTU != mtu {
			if err := l.h.LinkSetMTU(link, mtu); err != nil {
				return fmt.Errorf("ovs: mtu of %s: %w", name, err)
			}
		}
		if err := l.h.LinkSetUp(link); err != nil {
			return fmt.Errorf("ovs: up %s: %w", name, err)
		}
	}
	return nil
}

// Isolate makes dev an isolated port of its bridge.
func (l *NetlinkLinks) Isolate(dev string) error {
	link, err := l.h.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("ovs: isolate %s: %w", dev, err)
	}
	if err := l.h.LinkSetIsolated(link, true); err != nil {
		return fmt.Errorf("ovs: isolate %s: %w", dev, err)
	}
	return nil
}

// FlushLearned removes the dynamically learned FDB entries of every port of bridge.
func (l *NetlinkLinks) FlushLearned(bridge string) error {
	br, err := l.h.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("ovs: flush %s: %w", bridge, err)
	}
	ns, err := l.h.NeighList(0, unix.AF_BRIDGE)
	if err != nil {
		return fmt.Errorf("ovs: list fdb of %s: %w", bridge, err)
	}
	for i := range ns {
		n := ns[i]
		if n.MasterIndex != br.Attrs().Index || n.State&(netlink.NUD_PERMANENT|netlink.NUD_NOARP) != 0 {
			continue
		}
		n.Flags = netlink.NTF_MASTER
		if err := l.h.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("ovs: flush fdb of %s: %w", bridge, err)
		}
	}
	return nil
}

// HardwareAddr returns dev's MAC.
func (l *NetlinkLinks) HardwareAddr(dev string) ([6]byte, error) {
	link, err := l.h.LinkByName(dev)
	if err != nil {
		return [6]byte{}, fmt.Errorf("ovs: %s: %w", dev, err)
	}
	if len(link.Attrs().HardwareAddr) != 6 {
		return [6]byte{}, fmt.Errorf("ovs: %s has no Ethernet address", dev)
	}
	return [6]byte(link.Attrs().HardwareAddr), nil
}

// OpenPacket opens an AF_PACKET socket on dev bound to HeartbeatEtherType.
func (l *NetlinkLinks) OpenPacket(dev string) (io.ReadWriteCloser, error) {
	link, err := l.h.LinkByName(dev)
	if err != nil {
		return nil, fmt.Errorf("ovs: %s: %w", dev, err)
	}
	var f *os.File
	err = l.inNetns(func() error {
		var err error
		f, err = netdev.PacketSocket(link.Attrs().Index, HeartbeatEtherType, "ovs-heartbeat-"+dev)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("ovs: %s: %w", dev, err)
	}
	return f, nil
}

// Close releases the netlink socket.
func (l *NetlinkLinks) Close() error {
	l.h.Close()
	return nil
}

const ethtoolSTxCsum = 0x17 // ETHTOOL_STXCSUM

type ethtoolValue struct{ cmd, data uint32 }

type ifreqPtr struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [16]byte
}

// txChecksumOff is `ethtool -K name tx off`, through the legacy ioctl that every kernel
// still maps onto the feature flags.
func (l *NetlinkLinks) txChecksumOff(name string) error {
	return l.inNetns(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("ovs: ethtool socket: %w", err)
		}
		defer unix.Close(fd)
		v := ethtoolValue{cmd: ethtoolSTxCsum, data: 0}
		var ifr ifreqPtr
		copy(ifr.name[:unix.IFNAMSIZ-1], name)
		ifr.data = unsafe.Pointer(&v)
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
		runtime.KeepAlive(&v)
		if errno != 0 {
			return fmt.Errorf("ovs: tx checksum offload off on %s: %w", name, errno)
		}
		return nil
	})
}

// inNetns runs fn on a locked thread inside our namespace.
func (l *NetlinkLinks) inNetns(fn func() error) error {
	if l.ns == "" {
		return fn()
	}
	target, err := netns.GetFromPath(l.ns)
	if err != nil {
		return fmt.Errorf("ovs: open netns %s: %w", l.ns, err)
	}
	defer target.Close()
	if err := netdev.InNamespace(target, fn); err != nil {
		return fmt.Errorf("ovs: netns %s: %w", l.ns, err)
	}
	return nil
}
