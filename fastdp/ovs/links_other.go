//go:build !linux

package ovs

import (
	"errors"
	"io"
)

var errNoNetlink = errors.New("ovs: netlink needs linux")

// NetlinkLinks needs Linux.
type NetlinkLinks struct{}

// NewNetlinkLinks fails: netlink needs Linux.
func NewNetlinkLinks(nsPath string) (*NetlinkLinks, error) { return nil, errNoNetlink }

// DeleteLink fails: netlink needs Linux.
func (l *NetlinkLinks) DeleteLink(name string) error { return errNoNetlink }

// Uplink fails: netlink needs Linux.
func (l *NetlinkLinks) Uplink(bridge, ovsEnd, bridgeEnd string, mtu int) error { return errNoNetlink }

// Pair fails: netlink needs Linux.
func (l *NetlinkLinks) Pair(ovsEnd, hostEnd string, mtu int) error { return errNoNetlink }

// Isolate fails: netlink needs Linux.
func (l *NetlinkLinks) Isolate(dev string) error { return errNoNetlink }

// FlushLearned fails: netlink needs Linux.
func (l *NetlinkLinks) FlushLearned(bridge string) error { return errNoNetlink }

// HardwareAddr fails: netlink needs Linux.
func (l *NetlinkLinks) HardwareAddr(dev string) ([6]byte, error) { return [6]byte{}, errNoNetlink }

// OpenPacket fails: packet sockets need Linux.
func (l *NetlinkLinks) OpenPacket(dev string) (io.ReadWriteCloser, error) { return nil, errNoNetlink }

// Close does nothing.
func (l *NetlinkLinks) Close() error { return nil }
