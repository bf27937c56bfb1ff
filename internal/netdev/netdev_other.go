//go:build !linux

package netdev

import (
	"errors"
	"net"
	"net/netip"
)

// Netlink is unavailable off Linux; every call returns errors.ErrUnsupported.
type Netlink struct{}

var _ Links = Netlink{}

func (Netlink) EnsureBridge(string, net.HardwareAddr, int) error { return errors.ErrUnsupported }
func (Netlink) EnsureTAP(string, string, int) error              { return errors.ErrUnsupported }
func (Netlink) DeleteBridge(string) error                        { return errors.ErrUnsupported }
func (Netlink) Delete(string) error                              { return errors.ErrUnsupported }
func (Netlink) Exists(string) (bool, error)                      { return false, errors.ErrUnsupported }
func (Netlink) UnderlayMTU() (int, error)                        { return 0, errors.ErrUnsupported }

var _ Attacher = Netlink{}

func (Netlink) Attach(AttachSpec) (Attached, error)         { return Attached{}, errors.ErrUnsupported }
func (Netlink) Detach(string, string, []netip.Prefix) error { return errors.ErrUnsupported }
func (Netlink) Expose(string, netip.Prefix) error           { return errors.ErrUnsupported }
func (Netlink) Inspect(string, string) (Attached, bool, error) {
	return Attached{}, false, errors.ErrUnsupported
}
func (Netlink) Hide(string, netip.Prefix) error { return errors.ErrUnsupported }
