//go:build !linux

package tap

import (
	"errors"
	"fmt"
)

// Open is only implemented on Linux; elsewhere use tap/taptest.
func Open(cfg Config) (Device, error) {
	return nil, fmt.Errorf("tap %q: %w", cfg.Name, errors.ErrUnsupported)
}
