package daemon

import (
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// lockBridge makes this process the owner of the bridge name in the current network
// namespace, for as long as the returned closer is open. The state-dir lock cannot do it:
// a second router with another state dir in the same namespace would otherwise rewrite the
// first one's bridge (MAC, MTU) before failing on a port. The lock is an abstract unix
// socket, which is scoped to the network namespace and released by the kernel when the
// process dies, so a killed router never leaves it behind. A positive wait retries for a
// stopping owner.
func lockBridge(bridge string, wait time.Duration) (io.Closer, error) {
	addr := &net.UnixAddr{Name: "@weave-bridge/" + bridge, Net: "unix"}
	deadline := time.Now().Add(wait)
	for {
		ln, err := net.ListenUnix("unix", addr)
		if err == nil {
			return ln, nil
		}
		if !errors.Is(err, unix.EADDRINUSE) {
			return nil, fmt.Errorf("lock bridge %s: %w", bridge, err)
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("bridge %s in this network namespace belongs to another running weaver (another --state-dir?); stop it first", bridge)
		}
		time.Sleep(50 * time.Millisecond) // the kernel has no wait for a socket address
	}
}
