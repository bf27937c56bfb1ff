//go:build !linux

package netlab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"time"
)

func checkPlatform() error {
	return fmt.Errorf("netlab needs Linux network namespaces, not %s: %w", runtime.GOOS, errors.ErrUnsupported)
}

func doIn(string, func() error) error { return checkPlatform() }

func listenIn(string, string, string) (net.Listener, error) { return nil, checkPlatform() }

func listenPacketIn(string, string, string) (net.PacketConn, error) { return nil, checkPlatform() }

func dialIn(context.Context, string, string, string) (net.Conn, error) { return nil, checkPlatform() }

// PacketSocket needs Linux.
func PacketSocket(string, string, uint16) (*os.File, error) { return nil, checkPlatform() }

// CountFrames needs Linux.
func CountFrames(*os.File, time.Duration) (int, error) { return 0, checkPlatform() }
