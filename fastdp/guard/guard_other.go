//go:build !linux

package guard

import "net/netip"

// Guard is unavailable off Linux: Open returns ErrUnsupported.
type Guard struct{}

// Open returns ErrUnsupported off Linux.
func Open(Config) (*Guard, error) { return nil, ErrUnsupported }

// Allow does nothing off Linux.
func (*Guard) Allow(netip.Addr, bool) error { return ErrUnsupported }

// Refused is always 0 off Linux.
func (*Guard) Refused() (uint64, error) { return 0, ErrUnsupported }

// Close does nothing off Linux.
func (*Guard) Close() error { return nil }

// Remove does nothing off Linux: there is no table to remove.
func Remove(string) error { return nil }

// Read reports no table off Linux.
func Read(string) (State, error) { return State{}, nil }
