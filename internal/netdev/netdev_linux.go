package netdev

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Netlink is the Linux implementation of Links.
type Netlink struct{}

var _ Links = Netlink{}

func (Netlink) EnsureBridge(name string, mac net.HardwareAddr, mtu int) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		if !IsNotFound(err) {
			return fmt.Errorf("look up bridge %s: %w", name, err)
		}
		attrs := netlink.NewLinkAttrs()
		attrs.Name = name
		attrs.HardwareAddr = mac
		if mtu > 0 {
			attrs.MTU = mtu
		}
		br := &netlink.Bridge{LinkAttrs: attrs}
		if err := netlink.LinkAdd(br); err != nil {
			return fmt.Errorf("create bridge %s: %w", name, err)
		}
		if link, err = netlink.LinkByName(name); err != nil {
			return fmt.Errorf("look up new bridge %s: %w", name, err)
		}
	} else if link.Type() != "bridge" {
		return fmt.Errorf("%s exists but is a %s, not a bridge (run `weavectl reset` or remove it)", name, link.Type())
	}
	if mac != nil && link.Attrs().HardwareAddr.String() != mac.String() {
		if err := netlink.LinkSetHardwareAddr(link, mac); err != nil {
			return fmt.Errorf("set bridge %s address: %w", name, err)
		}
	}
	if mtu > 0 && link.Attrs().MTU != mtu {
		if err := netlink.LinkSetMTU(link, mtu); err != nil {
			return fmt.Errorf("set bridge %s mtu %d: %w", name, mtu, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring bridge %s up: %w", name, err)
	}
	return nil
}

func (Netlink) EnsureTAP(name, bridge string, mtu int) error {
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("look up bridge %s: %w", bridge, err)
	}
	link, err := netlink.LinkByName(name)
	if err != nil {
		if !IsNotFound(err) {
			return fmt.Errorf("look up tap %s: %w", name, err)
		}
		attrs := netlink.NewLinkAttrs()
		attrs.Name = name
		tap := &netlink.Tuntap{LinkAttrs: attrs, Mode: netlink.TUNTAP_MODE_TAP,
			Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR}
		if err := netlink.LinkAdd(tap); err != nil {
			return fmt.Errorf("create tap %s: %w", name, err)
		}
		// LinkAdd keeps the creating file descriptors open for non-persistent devices.
		for _, f := range tap.Fds {
			f.Close()
		}
		if link, err = netlink.LinkByName(name); err != nil {
			return fmt.Errorf("look up new tap %s: %w", name, err)
		}
	} else if link.Type() != "tuntap" {
		return fmt.Errorf("%s exists but is a %s, not a tap (run `weavectl reset` or remove it)", name, link.Type())
	}
	if mtu > 0 && link.Attrs().MTU != mtu {
		if err := netlink.LinkSetMTU(link, mtu); err != nil {
			return fmt.Errorf("set tap %s mtu %d: %w", name, mtu, err)
		}
	}
	if link.Attrs().MasterIndex != br.Attrs().Index {
		if err := netlink.LinkSetMaster(link, br); err != nil {
			return fmt.Errorf("attach tap %s to %s: %w", name, bridge, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring tap %s up: %w", name, err)
	}
	return nil
}

func (Netlink) Delete(name string) error { return DeleteLink(nil, name) }

func (Netlink) Exists(name string) (bool, error) {
	_, err := netlink.LinkByName(name)
	if err == nil {
		return true, nil
	}
	if IsNotFound(err) {
		return false, nil
	}
	return false, fmt.Errorf("look up %s: %w", name, err)
}

func (Netlink) UnderlayMTU() (int, error) {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return 0, fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
				return l.Attrs().MTU, nil
			}
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		return 0, fmt.Errorf("list links: %w", err)
	}
	best := SmallestAddressedMTU(&netlink.Handle{}, links)
	if best == 0 {
		return 0, errors.New("no underlay interface: no default route and no up interface with a global address")
	}
	return best, nil
}

func (n Netlink) DeleteBridge(name string) error {
	br, err := netlink.LinkByName(name)
	if err != nil {
		if IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("look up bridge %s: %w", name, err)
	}
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index {
			if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
				return fmt.Errorf("delete %s (port of %s): %w", l.Attrs().Name, name, err)
			}
		}
	}
	if err := netlink.LinkDel(br); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete bridge %s: %w", name, err)
	}
	return nil
}

// SmallestAddressedMTU is the underlay MTU of a host without a default route (a private
// underlay): the smallest MTU of the up links that carry a global address of their own.
// Bridges, their ports (container veths, our TAP, an OVS uplink) and tunnels are ours or
// overlays: counting them would shrink the MTU at every relaunch. 0: no such link. h is the
// netlink handle of the namespace links were listed in.
func SmallestAddressedMTU(h *netlink.Handle, links []netlink.Link) int {
	best := 0
	for _, l := range links {
		a := l.Attrs()
		if a.Flags&net.FlagLoopback != 0 || a.Flags&net.FlagUp == 0 || a.MasterIndex != 0 {
			continue
		}
		switch l.Type() {
		case "bridge", "tuntap", "vxlan", "openvswitch", "geneve", "wireguard":
			continue
		}
		addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			continue
		}
		for _, ad := range addrs {
			if ad.IP.IsGlobalUnicast() {
				if best == 0 || a.MTU < best {
					best = a.MTU
				}
				break
			}
		}
	}
	return best
}
