package ovs

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// NetlinkLinks deletes devices through netlink in one network namespace.
type NetlinkLinks struct {
	h *netlink.Handle
}

// NewNetlinkLinks works in the namespace at nsPath ("" for the caller's own). Close it.
func NewNetlinkLinks(nsPath string) (*NetlinkLinks, error) {
	if nsPath == "" {
		h, err := netlink.NewHandle()
		if err != nil {
			return nil, fmt.Errorf("ovs: netlink handle: %w", err)
		}
		return &NetlinkLinks{h: h}, nil
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
	return &NetlinkLinks{h: h}, nil
}

// DeleteLink deletes the device name (a veth takes its peer with it); a missing one is fine.
func (l *NetlinkLinks) DeleteLink(name string) error {
	link, err := l.h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return err
	}
	return l.h.LinkDel(link)
}

// Close releases the netlink socket.
func (l *NetlinkLinks) Close() error {
	l.h.Close()
	return nil
}
