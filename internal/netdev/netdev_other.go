//go:build !linux

package netdev

import (
	"errors"
	"net"
)

// Netlink is unavailable off Linux; every call returns errors.ErrUnsupported.
type Netlink struct{}

var _ Links = Netlink{}

func (Netlink) EnsureBridge(string, net.HardwareAddr, int) error { return errors.ErrUnsupported }
func (Netlink) EnsureTAP(string, string, int) error              { return errors.ErrUnsupported }
func (Netlink) Delete(string) error                              { return errors.ErrUnsupported }
func (Netlink) Exists(string) (bool, error)                      { return false, errors.ErrUnsupported }
func (Netlink) UnderlayMTU() (int, error)                        { return 0, errors.ErrUnsupported }
