package udp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// stdBind is the portable Bind over net.UDPConn: one datagram per system call. Linux uses
// the batched bind_linux.go instead; this one keeps other systems building and working.
type stdBind struct {
	conn  *net.UDPConn
	local netip.AddrPort
}

var _ Bind = (*stdBind)(nil)

func listenStd(cfg Config) (*stdBind, error) {
	network, addr := cfg.network()
	conn, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return nil, fmt.Errorf("listen udp %s: %w", addr, err)
	}
	return &stdBind{conn: conn, local: conn.LocalAddr().(*net.UDPAddr).AddrPort()}, nil
}

func (b *stdBind) ReadBatch(bufs [][]byte, sizes []int, eps []netip.AddrPort) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	n, ep, err := b.conn.ReadFromUDPAddrPort(bufs[0])
	if err != nil {
		return 0, fmt.Errorf("udp read: %w", err)
	}
	sizes[0], eps[0] = n, netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port())
	return 1, nil
}

func (b *stdBind) WriteBatch(bufs [][]byte, ep netip.AddrPort) error {
	for _, buf := range bufs {
		if _, err := b.conn.WriteToUDPAddrPort(buf, ep); err != nil {
			return fmt.Errorf("udp write to %s: %w", ep, err)
		}
	}
	return nil
}

func (b *stdBind) BatchSize() int            { return 1 }
func (b *stdBind) LocalAddr() netip.AddrPort { return b.local }

func (b *stdBind) Close() error {
	if err := b.conn.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}
