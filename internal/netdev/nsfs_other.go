//go:build !linux

package netdev

import "errors"

// CheckNetns needs Linux namespaces; elsewhere every path is refused.
func CheckNetns(path string) error { return errors.Join(ErrNotNetns, errors.ErrUnsupported) }
