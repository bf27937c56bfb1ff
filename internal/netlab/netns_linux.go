package netlab

import (
	"context"
	"fmt"
	"net"

	"github.com/vishvananda/netns"
	"github.com/weavemesh/weave/internal/netdev"
)

func checkPlatform() error { return nil }

// inNetns runs fn on an OS thread switched into the named namespace. Sockets fn creates stay in
// that namespace after the thread switches back. If switching back fails, the thread stays
// locked and dies with the goroutine rather than returning to the pool in the wrong namespace.
func inNetns(name string, fn func() error) error {
	target, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("netlab: open netns %s: %w", name, err)
	}
	defer target.Close()
	if err := netdev.InNamespace(target, fn); err != nil {
		return fmt.Errorf("netlab: netns %s: %w", name, err)
	}
	return nil
}

func doIn(ns string, fn func() error) error { return inNetns(ns, fn) }

func listenIn(ns, network, address string) (ln net.Listener, err error) {
	err = inNetns(ns, func() error {
		ln, err = net.Listen(network, address)
		return err
	})
	return ln, err
}

func listenPacketIn(ns, network, address string) (pc net.PacketConn, err error) {
	err = inNetns(ns, func() error {
		pc, err = net.ListenPacket(network, address)
		return err
	})
	return pc, err
}

// dialIn dials from inside ns. The socket is created on the locked thread, so it belongs to ns
// even though the connection completes through the netpoller.
func dialIn(ctx context.Context, ns, network, address string) (c net.Conn, err error) {
	err = inNetns(ns, func() error {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}
