package plugin

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weavemesh/weave/internal/netdev"
)

// LinuxHost is the real Host: netlink in the plugin's namespace and the container's.
type LinuxHost struct{}

var _ Host = LinuxHost{}

func (LinuxHost) Bridge(name string) (BridgeInfo, error) {
	br, err := netlink.LinkByName(name)
	if err != nil {
		return BridgeInfo{}, fmt.Errorf("look up bridge %s: %w", name, err)
	}
	addrs, err := netlink.AddrList(br, netlink.FAMILY_V4)
	if err != nil {
		return BridgeInfo{}, fmt.Errorf("addresses of %s: %w", name, err)
	}
	info := BridgeInfo{MTU: br.Attrs().MTU}
	for _, a := range addrs {
		if p, ok := netdev.Prefix(a.IPNet); ok {
			info.Addrs = append(info.Addrs, p)
		}
	}
	return info, nil
}

func (LinuxHost) IsOwnNetns(path string) (bool, error) {
	if err := ns.IsNSorErr(path); err != nil {
		return false, err
	}
	var a, b unix.Stat_t
	if err := unix.Stat(path, &a); err != nil {
		return false, fmt.Errorf("stat %s: %w", path, err)
	}
	if err := unix.Stat("/proc/self/ns/net", &b); err != nil {
		return false, fmt.Errorf("stat own namespace: %w", err)
	}
	return a.Dev == b.Dev && a.Ino == b.Ino, nil
}

func (LinuxHost) Attach(spec AttachSpec) (_ Attached, err error) {
	// netdev does what weavectl attach does (veth on the bridge, MTU, hairpin, accept_ra
	// off, address, gratuitous ARP); the CNI-specific gateway routes are added here.
	ns := netdev.AttachSpec{
		NetnsPath: spec.NetnsPath, IfName: spec.IfName, HostIfName: spec.HostIfName, Bridge: spec.Bridge,
		MTU: spec.MTU, CIDRs: []netip.Prefix{spec.CIDR}, Hairpin: spec.Hairpin,
	}
	exists, err := ownVeth(spec)
	if err != nil {
		return Attached{}, err
	}
	if !exists {
		if err := netdev.CreateVethIn(ns); err != nil {
			if errors.Is(err, unix.EEXIST) {
				// Both names were free a moment ago: someone else made one meanwhile.
				return Attached{}, fmt.Errorf("%w: %s or %s appeared while weave-cni was creating them: %v",
					ErrIfaceExists, spec.IfName, spec.HostIfName, err)
			}
			return Attached{}, err
		}
		// From here on a failure removes the pair this call made (deleting the host end
		// takes the container end with it), and nothing else.
		defer func() {
			if err != nil {
				if l, lerr := netlink.LinkByName(spec.HostIfName); lerr == nil {
					_ = netlink.LinkDel(l)
				}
			}
		}()
	}
	att, err := netdev.Netlink{}.Attach(ns)
	if err != nil {
		return Attached{}, err
	}
	host, err := netlink.LinkByName(spec.HostIfName)
	if err != nil {
		return Attached{}, fmt.Errorf("look up %s: %w", spec.HostIfName, err)
	}
	var routes []*types.Route
	if err := withHandle(spec.NetnsPath, func(nh *netlink.Handle) error {
		link, err := nh.LinkByName(spec.IfName)
		if err != nil {
			return fmt.Errorf("look up %s: %w", spec.IfName, err)
		}
		routes, err = addRoutes(nh, link, spec.CIDR, spec.Routes)
		return err
	}); err != nil {
		return Attached{}, err
	}
	return Attached{MAC: att.MAC, HostMAC: host.Attrs().HardwareAddr, Routes: routes}, nil
}

// ownVeth reports whether spec's veth pair exists already (an earlier ADD of the same
// container and interface). Either name taken by anything else is ErrIfaceExists: the
// container's interface may be another plugin's, or the runtime's own, and is never ours
// to replace or remove.
func ownVeth(spec AttachSpec) (bool, error) {
	host, herr := netlink.LinkByName(spec.HostIfName)
	var nf netlink.LinkNotFoundError
	if herr != nil && !errors.As(herr, &nf) {
		return false, fmt.Errorf("look up %s: %w", spec.HostIfName, herr)
	}
	var peer netlink.Link
	err := withHandle(spec.NetnsPath, func(nh *netlink.Handle) error {
		l, err := nh.LinkByName(spec.IfName)
		if err != nil && !errors.As(err, &nf) {
			return fmt.Errorf("look up %s: %w", spec.IfName, err)
		}
		peer = l
		return nil
	})
	if err != nil {
		return false, err
	}
	switch {
	case peer == nil && herr != nil:
		return false, nil
	case peer == nil:
		return false, fmt.Errorf("%w: host interface %s exists, but its peer is not %s in %s",
			ErrIfaceExists, spec.HostIfName, spec.IfName, spec.NetnsPath)
	case herr != nil:
		return false, fmt.Errorf("%w: %s in %s is a %s that weave-cni did not create (no host end %s)",
			ErrIfaceExists, spec.IfName, spec.NetnsPath, peer.Type(), spec.HostIfName)
	}
	// A veth's IFLA_LINK is its peer's index: both ends must name each other.
	if peer.Type() != "veth" || host.Type() != "veth" ||
		peer.Attrs().ParentIndex != host.Attrs().Index || host.Attrs().ParentIndex != peer.Attrs().Index {
		return false, fmt.Errorf("%w: %s in %s (%s) is not the peer of host interface %s",
			ErrIfaceExists, spec.IfName, spec.NetnsPath, peer.Type(), spec.HostIfName)
	}
	return true, nil
}

// addRoutes adds the routes through link and returns those in place. A gateway outside the
// interface's own network first gets a link route of its own so the kernel accepts it as a
// next hop. A destination another interface routes already (the default route of a pod's
// first interface, when this is its second) is left alone: a second network must not
// hijack the pod's traffic.
func addRoutes(nh *netlink.Handle, link netlink.Link, cidr netip.Prefix, routes []*types.Route) ([]*types.Route, error) {
	idx := link.Attrs().Index
	var done []*types.Route
	for _, r := range routes {
		dst := r.Dst
		route := &netlink.Route{LinkIndex: idx, Dst: &dst}
		if r.GW != nil {
			gw, ok := netip.AddrFromSlice(r.GW)
			if ok && !cidr.Masked().Contains(gw.Unmap()) {
				onlink := &netlink.Route{LinkIndex: idx, Dst: netdev.IPNet(netip.PrefixFrom(gw.Unmap(), gw.Unmap().BitLen())), Scope: netlink.SCOPE_LINK}
				if err := nh.RouteReplace(onlink); err != nil {
					return nil, fmt.Errorf("add link route to gateway %s: %w", gw, err)
				}
			}
			route.Gw = r.GW
		} else {
			route.Scope = netlink.SCOPE_LINK
		}
		if err := nh.RouteAdd(route); err != nil {
			if !errors.Is(err, unix.EEXIST) {
				return nil, fmt.Errorf("add route %s: %w", dst.String(), err)
			}
			// Ours from an earlier ADD of this interface, or another interface's.
			existing, lerr := nh.RouteList(link, netlink.FAMILY_ALL)
			if lerr != nil {
				return nil, fmt.Errorf("routes of %s: %w", link.Attrs().Name, lerr)
			}
			if !hasRoute(existing, r) {
				continue
			}
		}
		done = append(done, r)
	}
	return done, nil
}

// withHandle runs fn with a netlink handle in the namespace at path (containernetworking's
// ns helpers open it, and say whether it is gone or not a namespace at all).
func withHandle(path string, fn func(nh *netlink.Handle) error) error {
	n, err := ns.GetNS(path)
	if err != nil {
		return err
	}
	defer n.Close()
	nh, err := netlink.NewHandleAt(netns.NsHandle(n.Fd()))
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", path, err)
	}
	defer nh.Close()
	return fn(nh)
}

func isGone(err error) bool {
	var ne ns.NSPathNotExistErr
	var nn ns.NSPathNotNSErr
	return errors.As(err, &ne) || errors.As(err, &nn) || errors.Is(err, os.ErrNotExist)
}

// Detach deletes the host end, which is weave-cni's by its name (a hash of container and
// interface), and the kernel removes the container end with it. The container's ifName is
// never deleted by name: without our host end it is not our veth (the runtime's DEL after a
// refused ADD must not remove the interface the refusal protected).
func (LinuxHost) Detach(_, _, hostIfName string) error {
	return netdev.DeleteLink(nil, hostIfName)
}

func (LinuxHost) Check(want Expected) error {
	br, err := netlink.LinkByName(want.Bridge)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", want.Bridge, err)
	}
	host, err := netlink.LinkByName(want.HostIfName)
	if err != nil {
		return fmt.Errorf("host end %s: %w", want.HostIfName, err)
	}
	if host.Attrs().MasterIndex != br.Attrs().Index {
		return fmt.Errorf("host end %s is not on bridge %s", want.HostIfName, want.Bridge)
	}
	return withHandle(want.NetnsPath, func(nh *netlink.Handle) error {
		link, err := nh.LinkByName(want.IfName)
		if err != nil {
			return fmt.Errorf("interface %s: %w", want.IfName, err)
		}
		if link.Type() != "veth" {
			return fmt.Errorf("%s is a %s, not a veth", want.IfName, link.Type())
		}
		if want.MAC != "" && !strings.EqualFold(link.Attrs().HardwareAddr.String(), want.MAC) {
			return fmt.Errorf("%s has MAC %s, ADD gave %s", want.IfName, link.Attrs().HardwareAddr, want.MAC)
		}
		if link.Attrs().OperState == netlink.OperDown {
			return fmt.Errorf("%s is down", want.IfName)
		}
		addrs, err := nh.AddrList(link, netlink.FAMILY_ALL)
		if err != nil {
			return fmt.Errorf("addresses of %s: %w", want.IfName, err)
		}
		for _, ip := range want.IPs {
			found := false
			for _, a := range addrs {
				if a.IPNet.String() == ip.Address.String() {
					found = true
				}
			}
			if !found {
				return fmt.Errorf("%s lacks address %s", want.IfName, ip.Address.String())
			}
		}
		routes, err := nh.RouteList(link, netlink.FAMILY_ALL)
		if err != nil {
			return fmt.Errorf("routes of %s: %w", want.IfName, err)
		}
		for _, r := range want.Routes {
			if !hasRoute(routes, r) {
				return fmt.Errorf("route %s via %v is missing", r.Dst.String(), r.GW)
			}
		}
		return nil
	})
}

func hasRoute(routes []netlink.Route, want *types.Route) bool {
	wantDst := want.Dst.String()
	for _, r := range routes {
		dst := "0.0.0.0/0"
		if r.Dst != nil {
			dst = r.Dst.String()
		} else if r.Family == unix.AF_INET6 {
			dst = "::/0"
		}
		if dst != wantDst {
			continue
		}
		if want.GW == nil || net.IP.Equal(r.Gw, want.GW) {
			return true
		}
	}
	return false
}

func (LinuxHost) Lock(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}
