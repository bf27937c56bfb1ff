package netdev

import (
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// CreateVethIn creates spec's veth pair with the container end made directly inside the
// namespace under its final name (host end on the bridge, MTU, hairpin, up), so that a
// following Attach only completes it. Moving a link between namespaces, as Attach does when
// it creates the pair itself, waits for an RCU grace period: about half of a CNI ADD's time
// on a busy host. When either name exists already nothing is made and the error wraps
// unix.EEXIST: the caller decides whether what is there is its own.
func CreateVethIn(spec AttachSpec) error {
	if err := checkIfNames(spec); err != nil {
		return err
	}
	ns, err := OpenNetns(spec.NetnsPath)
	if err != nil {
		return err
	}
	defer ns.Close()
	br, err := netlink.LinkByName(spec.Bridge)
	if err != nil {
		return fmt.Errorf("look up bridge %s: %w", spec.Bridge, err)
	}
	return addVeth(ns, br, spec)
}

// addVeth is the one veth creator: the host end on the bridge (MTU, hairpin, up) and the
// container end made directly inside ns under its final name, so nothing is ever moved
// between namespaces (see CreateVethIn). An error from creating the pair wraps the kernel's
// (EEXIST when either name is taken); a later failure removes the pair again.
func addVeth(ns netns.NsHandle, br netlink.Link, spec AttachSpec) error {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = spec.HostIfName
	attrs.MTU = spec.MTU
	attrs.MasterIndex = br.Attrs().Index
	veth := &netlink.Veth{LinkAttrs: attrs, PeerName: spec.IfName, PeerMTU: uint32(spec.MTU),
		PeerNamespace: netlink.NsFd(int(ns))}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s/%s: %w", spec.HostIfName, spec.IfName, err)
	}
	host, err := netlink.LinkByName(spec.HostIfName)
	if err != nil {
		_ = netlink.LinkDel(veth)
		return fmt.Errorf("look up %s: %w", spec.HostIfName, err)
	}
	if spec.Hairpin {
		if err := netlink.LinkSetHairpin(host, true); err != nil {
			_ = netlink.LinkDel(host)
			return fmt.Errorf("hairpin on %s: %w", spec.HostIfName, err)
		}
	}
	if err := netlink.LinkSetUp(host); err != nil {
		_ = netlink.LinkDel(host)
		return fmt.Errorf("bring %s up: %w", spec.HostIfName, err)
	}
	return nil
}

// checkIfNames refuses interface names the kernel would refuse (IFNAMSIZ), before anything
// is made.
func checkIfNames(spec AttachSpec) error {
	if spec.IfName == "" || len(spec.IfName) > 15 || len(spec.HostIfName) > 15 || spec.HostIfName == "" {
		return fmt.Errorf("interface names %q/%q must be 1-15 characters", spec.IfName, spec.HostIfName)
	}
	return nil
}
