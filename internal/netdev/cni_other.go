//go:build !linux

package netdev

import "errors"

// CreateVethIn is unavailable off Linux.
func CreateVethIn(AttachSpec) error { return errors.ErrUnsupported }
