//go:build !linux

package fastdp

import "fmt"

func openKernel(cfg Config) (Kernel, error) {
	return nil, fmt.Errorf("create %s: %w", cfg.Device, ErrNoKernelSupport)
}

// Cleanup removes the VXLAN device; there is none outside Linux.
func Cleanup(ns, device string) error { return nil }
