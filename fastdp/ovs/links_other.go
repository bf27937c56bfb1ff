//go:build !linux

package ovs

import "errors"

var errNoNetlink = errors.New("ovs: netlink needs linux")

// NetlinkLinks needs Linux.
type NetlinkLinks struct{}

// NewNetlinkLinks fails: netlink needs Linux.
func NewNetlinkLinks(nsPath string) (*NetlinkLinks, error) { return nil, errNoNetlink }

// DeleteLink fails: netlink needs Linux.
func (l *NetlinkLinks) DeleteLink(name string) error { return errNoNetlink }

// Uplink fails: netlink needs Linux.
func (l *NetlinkLinks) Uplink(bridge, ovsEnd, bridgeEnd string, mtu int) error { return errNoNetlink }

// Close does nothing.
func (l *NetlinkLinks) Close() error { return nil }
