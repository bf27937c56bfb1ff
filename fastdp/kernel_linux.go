package fastdp

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"github.com/weavemesh/weave/internal/logx"
	"github.com/weavemesh/weave/internal/netdev"
	"golang.org/x/sys/unix"
)

// iflaVXLANDF is IFLA_VXLAN_DF (Linux 5.2): the outer header's DF bit. netlink v1.3.1 does
// not expose it.
const iflaVXLANDF = 29

// vxlanKernel is the Linux Kernel: a VXLAN device enslaved to the bridge, programmed with
// netlink (a handle bound to the target namespace), and an AF_PACKET socket bound to the
// device for heartbeat frames only (EtherType 0x88b5, so data frames never reach us).
type vxlanKernel struct {
	log    *slog.Logger
	h      *netlink.Handle
	idx    int
	bridge int
	mac    [6]byte
	mtu    int
	drop   netip.Addr // FDB destination that makes the device drop the frame
	sock   *os.File

	// reading is held (read side) by ReadFrame for the duration of a read, and taken by
	// the goroutine that releases the socket, so that the release never falls on the reader.
	reading   sync.RWMutex
	released  bool // under reading (write side)
	closeOnce sync.Once

	// hmu orders LinkStats (called by scrapes at any time) before the handle's Close: a
	// closed netlink.Handle silently falls back to the caller's namespace, where the same
	// index may name another device.
	hmu     sync.Mutex
	hclosed bool
}

var _ StatsKernel = (*vxlanKernel)(nil)

// inNetns runs fn on an OS thread switched into ns ("" = stay). Netlink requests and
// sockets made by fn belong to ns. If switching back fails, the thread stays locked and
// dies with the goroutine rather than return to the pool in the wrong namespace.
func inNetns(ns string, fn func() error) error {
	if ns == "" {
		return fn()
	}
	target, err := openNetns(ns)
	if err != nil {
		return err
	}
	defer target.Close()
	if err := netdev.InNamespace(target, fn); err != nil {
		return fmt.Errorf("netns %s: %w", ns, err)
	}
	return nil
}

func openNetns(ns string) (netns.NsHandle, error) {
	var h netns.NsHandle
	var err error
	if strings.Contains(ns, "/") {
		h, err = netns.GetFromPath(ns)
	} else {
		h, err = netns.GetFromName(ns)
	}
	if err != nil {
		return 0, fmt.Errorf("open netns %s: %w", ns, err)
	}
	return h, nil
}

func newHandle(ns string) (*netlink.Handle, error) {
	if ns == "" {
		return netlink.NewHandle()
	}
	nsh, err := openNetns(ns)
	if err != nil {
		return nil, err
	}
	defer nsh.Close()
	return netlink.NewHandleAt(nsh)
}

func openKernel(cfg Config) (_ *vxlanKernel, err error) {
	h, err := newHandle(cfg.Netns)
	if err != nil {
		return nil, fmt.Errorf("fastdp: netlink: %w", err)
	}
	k := &vxlanKernel{log: cfg.Logger, h: h, drop: netip.IPv4Unspecified()}
	if cfg.LocalAddr.IsValid() && cfg.LocalAddr.Is6() && !cfg.LocalAddr.Is4In6() {
		k.drop = netip.IPv6Unspecified()
	}
	defer func() {
		if err != nil {
			k.Close()
		}
	}()
	br, err := h.LinkByName(cfg.Bridge)
	if err != nil {
		return nil, fmt.Errorf("fastdp: bridge %s: %w", cfg.Bridge, err)
	}
	k.bridge = br.Attrs().Index
	mtu := cfg.MTU
	if mtu == 0 {
		if mtu, err = underlayMTU(h, cfg.LocalAddr); err != nil {
			return nil, fmt.Errorf("fastdp: mtu: %w", err)
		}
	}
	if mtu < 576 || mtu > 65535-OverheadIPv6 {
		return nil, fmt.Errorf("fastdp: mtu %d out of range", mtu)
	}
	k.mtu = mtu
	link, err := k.ensureDevice(cfg, br)
	if err != nil {
		return nil, err
	}
	k.idx = link.Attrs().Index
	k.mac = [6]byte(link.Attrs().HardwareAddr)
	for _, name := range cfg.Isolate {
		port, err := h.LinkByName(name)
		if err != nil {
			return nil, fmt.Errorf("fastdp: isolate %s: %w", name, err)
		}
		if err := h.LinkSetIsolated(port, true); err != nil {
			return nil, fmt.Errorf("fastdp: isolate %s: %w", name, err)
		}
	}
	err = inNetns(cfg.Netns, func() error {
		var err error
		k.sock, err = netdev.PacketSocket(k.idx, etherType, "fastdp-heartbeat")
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("fastdp: %s: %w", cfg.Device, err)
	}
	return k, nil
}

// ensureDevice creates the VXLAN device, or adopts one left by an earlier run when it has
// the same VNI and port (a restart keeps the kernel path up); one with other settings is
// replaced. Adopted devices start with an empty FDB: entries come back as peers do.
func (k *vxlanKernel) ensureDevice(cfg Config, br netlink.Link) (netlink.Link, error) {
	h := k.h
	if old, err := h.LinkByName(cfg.Device); err == nil {
		vx, ok := old.(*netlink.Vxlan)
		if !ok {
			return nil, fmt.Errorf("fastdp: %s exists and is a %s, not vxlan", cfg.Device, old.Type())
		}
		if vx.VxlanId == int(cfg.VNI) && vx.Port == cfg.Port && !vx.Learning && vx.Attrs().MasterIndex == k.bridge &&
			addrEqual(vx.SrcAddr, cfg.LocalAddr) {
			k.log.Info("adopting the existing device", logx.KeyDevice, cfg.Device)
			if err := k.flushSelf(vx.Attrs().Index); err != nil {
				return nil, err
			}
			return k.finishDevice(cfg, vx)
		}
		k.log.Info("replacing a device with other settings", logx.KeyDevice, cfg.Device)
		if err := h.LinkDel(old); err != nil {
			return nil, fmt.Errorf("fastdp: delete old %s: %w", cfg.Device, err)
		}
	}
	vx := &netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{Name: cfg.Device, MTU: k.mtu},
		VxlanId:   int(cfg.VNI),
		Port:      cfg.Port,
		Learning:  false,
		TTL:       64,
	}
	if cfg.LocalAddr.IsValid() {
		vx.SrcAddr = net.IP(cfg.LocalAddr.AsSlice())
	}
	if err := h.LinkAdd(vx); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EAFNOSUPPORT) {
			return nil, fmt.Errorf("create %s: %w: %w", cfg.Device, ErrNoKernelSupport, err)
		}
		return nil, fmt.Errorf("fastdp: create %s: %w", cfg.Device, err)
	}
	link, err := h.LinkByName(cfg.Device)
	if err != nil {
		return nil, fmt.Errorf("fastdp: %s: %w", cfg.Device, err)
	}
	// DF on the outer header: a frame too big for the underlay is dropped, not fragmented,
	// so a full-size heartbeat proves the MTU (Weave's rule) and no silent fragmentation
	// hurts throughput. Older kernels lack it; the heartbeats still work.
	if err := inNetns(cfg.Netns, func() error { return setDF(link.Attrs().Index) }); err != nil {
		k.log.Warn("cannot set DF on the VXLAN device; path MTU is not verified", logx.KeyErr, err)
	}
	return k.finishDevice(cfg, link)
}

func (k *vxlanKernel) finishDevice(cfg Config, link netlink.Link) (netlink.Link, error) {
	h := k.h
	if link.Attrs().MTU != k.mtu {
		if err := h.LinkSetMTU(link, k.mtu); err != nil {
			return nil, fmt.Errorf("fastdp: set mtu %d on %s: %w", k.mtu, cfg.Device, err)
		}
	}
	br, err := h.LinkByIndex(k.bridge)
	if err != nil {
		return nil, fmt.Errorf("fastdp: bridge: %w", err)
	}
	if err := h.LinkSetMaster(link, br); err != nil {
		return nil, fmt.Errorf("fastdp: add %s to %s: %w", cfg.Device, cfg.Bridge, err)
	}
	if err := h.LinkSetIsolated(link, true); err != nil {
		return nil, fmt.Errorf("fastdp: isolate %s: %w", cfg.Device, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("fastdp: up %s: %w", cfg.Device, err)
	}
	return h.LinkByIndex(link.Attrs().Index)
}

func addrEqual(ip net.IP, a netip.Addr) bool {
	if len(ip) == 0 || ip.IsUnspecified() {
		return !a.IsValid()
	}
	b, _ := netip.AddrFromSlice(ip)
	return a.IsValid() && b.Unmap() == a.Unmap()
}

func setDF(index int) error {
	req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	req.AddData(msg)
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("vxlan"))
	data := info.AddRtAttr(nl.IFLA_INFO_DATA, nil)
	data.AddRtAttr(iflaVXLANDF, nl.Uint8Attr(1)) // VXLAN_DF_SET
	req.AddData(info)
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// underlayMTU derives the VXLAN MTU from the link that carries LocalAddr, or the default
// route's link.
func underlayMTU(h *netlink.Handle, local netip.Addr) (int, error) {
	ipv6 := local.IsValid() && local.Is6() && !local.Is4In6()
	links, err := h.LinkList()
	if err != nil {
		return 0, err
	}
	byIndex := map[int]netlink.Link{}
	for _, l := range links {
		byIndex[l.Attrs().Index] = l
	}
	if local.IsValid() {
		for _, l := range links {
			addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
			if err != nil {
				continue
			}
			for _, a := range addrs {
				if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == local.Unmap() {
					return MTUFor(l.Attrs().MTU, ipv6), nil
				}
			}
		}
		return 0, fmt.Errorf("no link has address %s", local)
	}
	routes, err := h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return 0, err
	}
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() && isZeroMask(r.Dst.Mask) {
			if l := byIndex[r.LinkIndex]; l != nil {
				return MTUFor(l.Attrs().MTU, false), nil
			}
		}
	}
	// No default route (a private underlay): see netdev.SmallestAddressedMTU.
	best := netdev.SmallestAddressedMTU(h, links)
	if best == 0 {
		return 0, errors.New("no underlay link found to take the MTU from; set the MTU")
	}
	return MTUFor(best, false), nil
}

func isZeroMask(m net.IPMask) bool {
	ones, _ := m.Size()
	return ones == 0
}

func (k *vxlanKernel) MTU() int              { return k.mtu }
func (k *vxlanKernel) HardwareAddr() [6]byte { return k.mac }

func (k *vxlanKernel) fdb(mac [6]byte, addr netip.Addr) *netlink.Neigh {
	if !addr.IsValid() {
		// The kernel drops frames whose FDB destination is the unspecified address.
		addr = k.drop
	}
	return &netlink.Neigh{
		LinkIndex:    k.idx,
		Family:       unix.AF_BRIDGE,
		State:        netlink.NUD_PERMANENT | netlink.NUD_NOARP,
		Flags:        netlink.NTF_SELF,
		HardwareAddr: net.HardwareAddr(mac[:]),
		IP:           net.IP(addr.AsSlice()),
	}
}

// setGroup adds or removes one destination of a multi-destination entry (zero MAC or a
// group MAC: the kernel allows NLM_F_APPEND only for those).
func (k *vxlanKernel) setGroup(mac [6]byte, addr netip.Addr, on bool) error {
	n := k.fdb(mac, addr)
	if on {
		if err := k.h.NeighAppend(n); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("fdb append %s dst %s: %w", net.HardwareAddr(mac[:]), addr, err)
		}
		return nil
	}
	if err := k.h.NeighDel(n); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("fdb del %s dst %s: %w", net.HardwareAddr(mac[:]), addr, err)
	}
	return nil
}

func (k *vxlanKernel) SetHeartbeatRemote(addr netip.Addr, on bool) error {
	return k.setGroup(heartbeatMAC, addr, on)
}

func (k *vxlanKernel) SetFloodRemote(addr netip.Addr, on bool) error {
	return k.setGroup([6]byte{}, addr, on)
}

func (k *vxlanKernel) SetMAC(mac [6]byte, addr netip.Addr) error {
	if err := k.h.NeighSet(k.fdb(mac, addr)); err != nil {
		return fmt.Errorf("fdb set %s dst %s: %w", net.HardwareAddr(mac[:]), addr, err)
	}
	return nil
}

func (k *vxlanKernel) DelMAC(mac [6]byte, addr netip.Addr) error {
	if err := k.h.NeighDel(k.fdb(mac, addr)); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("fdb del %s dst %s: %w", net.HardwareAddr(mac[:]), addr, err)
	}
	return nil
}

// flushSelf removes every entry of the VXLAN device's own FDB (left by an earlier run).
func (k *vxlanKernel) flushSelf(idx int) error {
	ns, err := k.h.NeighList(idx, unix.AF_BRIDGE)
	if err != nil {
		return fmt.Errorf("fastdp: list fdb: %w", err)
	}
	for i := range ns {
		n := ns[i]
		if n.LinkIndex != idx || n.Flags&netlink.NTF_MASTER != 0 || n.IP == nil {
			continue
		}
		n.Flags = netlink.NTF_SELF
		if err := k.h.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("fastdp: flush fdb: %w", err)
		}
	}
	return nil
}

// FlushLearned removes the bridge's dynamically learned entries (all ports: the MACs that
// moved between the router's TAP and the VXLAN port are exactly the ones to forget).
func (k *vxlanKernel) FlushLearned() error {
	ns, err := k.h.NeighList(0, unix.AF_BRIDGE)
	if err != nil {
		return fmt.Errorf("list bridge fdb: %w", err)
	}
	for i := range ns {
		n := ns[i]
		if n.MasterIndex != k.bridge || n.State&(netlink.NUD_PERMANENT|netlink.NUD_NOARP) != 0 {
			continue
		}
		n.Flags = netlink.NTF_MASTER
		if err := k.h.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("flush bridge fdb: %w", err)
		}
	}
	return nil
}

func (k *vxlanKernel) WriteFrame(frame []byte) error {
	_, err := k.sock.Write(frame)
	return err
}

func (k *vxlanKernel) ReadFrame(buf []byte) (int, error) {
	k.reading.RLock()
	defer k.reading.RUnlock()
	if k.released {
		return 0, os.ErrClosed
	}
	return k.sock.Read(buf)
}

func (k *vxlanKernel) Close() error {
	k.closeOnce.Do(func() {
		if k.sock != nil {
			// The deadline wakes the reader at once. Releasing a packet socket waits for
			// an RCU grace period in the kernel (synchronize_net: 10-15 ms), which must not
			// lengthen the daemon's shutdown (nor fall on the reader, which would perform
			// the release if it held the last reference), so the descriptor is closed by a
			// goroutine that waits for the reader to leave and ends when the kernel returns.
			_ = k.sock.SetReadDeadline(time.Unix(1, 0))
			go func() {
				k.reading.Lock()
				defer k.reading.Unlock()
				k.released = true
				k.sock.Close()
			}()
		}
		k.hmu.Lock()
		k.hclosed = true
		if k.h != nil {
			k.h.Close()
		}
		k.hmu.Unlock()
	})
	return nil
}

// LinkStats reads the VXLAN device's counters: what the kernel encapsulated (tx) and
// decapsulated (rx) for fastdp, errors counted as drops.
func (k *vxlanKernel) LinkStats() (LinkStats, error) {
	k.hmu.Lock()
	defer k.hmu.Unlock()
	if k.hclosed {
		return LinkStats{}, os.ErrClosed
	}
	l, err := k.h.LinkByIndex(k.idx)
	if err != nil {
		return LinkStats{}, fmt.Errorf("fastdp: device stats: %w", err)
	}
	st := l.Attrs().Statistics
	if st == nil {
		return LinkStats{}, errors.New("fastdp: device stats: the kernel sent none")
	}
	return LinkStats{
		RxFrames: st.RxPackets, RxBytes: st.RxBytes, RxDropped: st.RxDropped + st.RxErrors,
		TxFrames: st.TxPackets, TxBytes: st.TxBytes, TxDropped: st.TxDropped + st.TxErrors,
	}, nil
}

// Cleanup removes the VXLAN device named device in the network namespace ns ("" = ours),
// and with it every FDB entry; for `weavectl reset`. A missing device is not an error.
func Cleanup(ns, device string) error {
	h, err := newHandle(ns)
	if err != nil {
		return fmt.Errorf("fastdp: cleanup: %w", err)
	}
	defer h.Close()
	l, err := h.LinkByName(device)
	if err != nil {
		if netdev.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("fastdp: cleanup %s: %w", device, err)
	}
	if _, ok := l.(*netlink.Vxlan); !ok {
		return fmt.Errorf("fastdp: cleanup: %s is a %s, not vxlan; left alone", device, l.Type())
	}
	if err := h.LinkDel(l); err != nil {
		return fmt.Errorf("fastdp: cleanup %s: %w", device, err)
	}
	return nil
}
