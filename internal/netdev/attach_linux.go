package netdev

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

var _ Attacher = Netlink{}

func (Netlink) Attach(spec AttachSpec) (Attached, error) {
	if err := checkIfNames(spec); err != nil {
		return Attached{}, err
	}
	ns, err := OpenNetns(spec.NetnsPath)
	if err != nil {
		return Attached{}, err
	}
	defer ns.Close()
	nh, err := netlink.NewHandleAt(ns)
	if err != nil {
		return Attached{}, fmt.Errorf("netlink in %s: %w", spec.NetnsPath, err)
	}
	defer nh.Close()
	br, err := netlink.LinkByName(spec.Bridge)
	if err != nil {
		return Attached{}, fmt.Errorf("look up bridge %s: %w", spec.Bridge, err)
	}

	link, err := nh.LinkByName(spec.IfName)
	if err != nil {
		if !IsNotFound(err) {
			return Attached{}, fmt.Errorf("look up %s in %s: %w", spec.IfName, spec.NetnsPath, err)
		}
		// The container has no interface, so a host end of that name is half-made (a
		// daemon killed mid-attach): it would make every later attach fail with "file
		// exists". Its peer goes with it (also a wetmp… device an older version left).
		if err := (Netlink{}).Delete(spec.HostIfName); err != nil {
			return Attached{}, fmt.Errorf("remove half-made %s: %w", spec.HostIfName, err)
		}
		if link, err = createVeth(nh, ns, br, spec); err != nil {
			return Attached{}, err
		}
	}
	if err := disableIPv6RA(ns, spec.IfName); err != nil {
		return Attached{}, err
	}
	for _, c := range spec.CIDRs {
		addr := &netlink.Addr{IPNet: IPNet(c)}
		if err := nh.AddrAdd(link, addr); err != nil && !errors.Is(err, unix.EEXIST) {
			return Attached{}, fmt.Errorf("add %s to %s: %w", c, spec.IfName, err)
		}
	}
	if err := nh.LinkSetUp(link); err != nil {
		return Attached{}, fmt.Errorf("bring %s up: %w", spec.IfName, err)
	}
	for _, r := range spec.Routes {
		route := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: IPNet(r), Scope: netlink.SCOPE_LINK}
		if err := nh.RouteAdd(route); err != nil && !errors.Is(err, unix.EEXIST) {
			return Attached{}, fmt.Errorf("add route %s via %s: %w", r, spec.IfName, err)
		}
	}
	addrs, err := nh.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return Attached{}, fmt.Errorf("list addresses of %s: %w", spec.IfName, err)
	}
	res := Attached{MAC: link.Attrs().HardwareAddr}
	for _, a := range addrs {
		if p, ok := Prefix(a.IPNet); ok {
			res.CIDRs = append(res.CIDRs, p)
		}
	}
	for _, c := range spec.CIDRs {
		// Neighbours that cached an old MAC for the address learn the new one at once.
		if err := gratuitousARP(ns, spec.IfName, link.Attrs().HardwareAddr, c.Addr()); err != nil {
			return res, fmt.Errorf("gratuitous ARP for %s: %w", c.Addr(), err)
		}
	}
	return res, nil
}

// createVeth makes spec's veth pair (addVeth) for an Attach that found no container
// interface, and returns the container end.
func createVeth(nh *netlink.Handle, ns netns.NsHandle, br netlink.Link, spec AttachSpec) (netlink.Link, error) {
	if err := addVeth(ns, br, spec); err != nil {
		return nil, err
	}
	link, err := nh.LinkByName(spec.IfName)
	if err != nil {
		return nil, fmt.Errorf("look up %s in %s: %w", spec.IfName, spec.NetnsPath, err)
	}
	return link, nil
}

// disableIPv6RA turns router advertisements off on the container interface: a container
// must not be able to hijack its neighbours' default route (CVE-2020-11091).
func disableIPv6RA(ns netns.NsHandle, ifName string) error {
	return InNamespace(ns, func() error {
		p := "/proc/sys/net/ipv6/conf/" + ifName + "/accept_ra"
		if err := os.WriteFile(p, []byte("0"), 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("disable accept_ra on %s: %w", ifName, err)
		}
		return nil
	})
}

func gratuitousARP(ns netns.NsHandle, ifName string, mac net.HardwareAddr, ip netip.Addr) error {
	if !ip.Is4() || len(mac) != 6 {
		return nil
	}
	return InNamespace(ns, func() error {
		ifi, err := net.InterfaceByName(ifName)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM, int(Htons(unix.ETH_P_ARP)))
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		defer unix.Close(fd)
		pkt := make([]byte, 28)
		binary.BigEndian.PutUint16(pkt[0:], 1)      // Ethernet
		binary.BigEndian.PutUint16(pkt[2:], 0x0800) // IPv4
		pkt[4], pkt[5] = 6, 4
		binary.BigEndian.PutUint16(pkt[6:], 1) // request: the form every stack accepts as an announcement
		copy(pkt[8:], mac)
		a := ip.As4()
		copy(pkt[14:], a[:])
		copy(pkt[24:], a[:])
		sa := &unix.SockaddrLinklayer{Protocol: Htons(unix.ETH_P_ARP), Ifindex: ifi.Index, Halen: 6,
			Addr: [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}
		if err := unix.Sendto(fd, pkt, 0, sa); err != nil {
			return fmt.Errorf("send: %w", err)
		}
		return nil
	})
}

func (Netlink) Detach(netnsPath, ifName string, cidrs []netip.Prefix) error {
	ns, err := OpenNetns(netnsPath)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, ErrNotNetns) {
			// The namespace is gone and its veth with it (an unmounted netns leaves its
			// bind-mount target behind as a plain file).
			return nil
		}
		return err
	}
	defer ns.Close()
	nh, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", netnsPath, err)
	}
	defer nh.Close()
	link, err := nh.LinkByName(ifName)
	if err != nil {
		if IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("look up %s in %s: %w", ifName, netnsPath, err)
	}
	if len(cidrs) == 0 {
		if err := nh.LinkDel(link); err != nil {
			return fmt.Errorf("delete %s in %s: %w", ifName, netnsPath, err)
		}
		return nil
	}
	for _, c := range cidrs {
		if err := nh.AddrDel(link, &netlink.Addr{IPNet: IPNet(c)}); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("remove %s from %s: %w", c, ifName, err)
		}
	}
	return nil
}

func (Netlink) Expose(bridge string, cidr netip.Prefix) error {
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("look up bridge %s: %w", bridge, err)
	}
	if err := netlink.AddrAdd(br, &netlink.Addr{IPNet: IPNet(cidr)}); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add %s to %s: %w", cidr, bridge, err)
	}
	return nil
}

func (Netlink) Hide(bridge string, cidr netip.Prefix) error {
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("look up bridge %s: %w", bridge, err)
	}
	if err := netlink.AddrDel(br, &netlink.Addr{IPNet: IPNet(cidr)}); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("remove %s from %s: %w", cidr, bridge, err)
	}
	return nil
}

func (Netlink) Inspect(netnsPath, ifName string) (Attached, bool, error) {
	ns, err := OpenNetns(netnsPath)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, ErrNotNetns) {
			return Attached{}, false, nil // the namespace is gone (its path may be reused)
		}
		return Attached{}, false, err
	}
	defer ns.Close()
	nh, err := netlink.NewHandleAt(ns)
	if err != nil {
		return Attached{}, false, fmt.Errorf("netlink in %s: %w", netnsPath, err)
	}
	defer nh.Close()
	link, err := nh.LinkByName(ifName)
	if err != nil {
		if IsNotFound(err) {
			return Attached{}, false, nil
		}
		return Attached{}, false, fmt.Errorf("look up %s in %s: %w", ifName, netnsPath, err)
	}
	addrs, err := nh.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return Attached{}, false, fmt.Errorf("list addresses of %s: %w", ifName, err)
	}
	res := Attached{MAC: link.Attrs().HardwareAddr}
	for _, a := range addrs {
		if p, ok := Prefix(a.IPNet); ok {
			res.CIDRs = append(res.CIDRs, p)
		}
	}
	return res, true, nil
}
