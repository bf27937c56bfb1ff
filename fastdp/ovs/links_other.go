//go:build !linux

package ovs

import "errors"

// NetlinkLinks needs Linux.
type NetlinkLinks struct{}

// NewNetlinkLinks fails: netlink needs Linux.
func NewNetlinkLinks(nsPath string) (*NetlinkLinks, error) {
	return nil, errors.New("ovs: netlink needs linux")
}

// DeleteLink fails: netlink needs Linux.
func (l *NetlinkLinks) DeleteLink(name string) error { return errors.New("ovs: netlink needs linux") }

// Close does nothing.
func (l *NetlinkLinks) Close() error { return nil }
