//go:build !linux

package plugin

import "errors"

// LinuxHost is unavailable off Linux: every call fails with errors.ErrUnsupported.
type LinuxHost struct{}

var _ Host = LinuxHost{}

func (LinuxHost) Bridge(string) (BridgeInfo, error)   { return BridgeInfo{}, errors.ErrUnsupported }
func (LinuxHost) IsOwnNetns(string) (bool, error)     { return false, errors.ErrUnsupported }
func (LinuxHost) Attach(AttachSpec) (Attached, error) { return Attached{}, errors.ErrUnsupported }
func (LinuxHost) Detach(string, string, string) error { return errors.ErrUnsupported }
func (LinuxHost) Check(Expected) error                { return errors.ErrUnsupported }
func (LinuxHost) Lock(string) (func(), error)         { return nil, errors.ErrUnsupported }
