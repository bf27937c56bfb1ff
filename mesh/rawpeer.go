package mesh

import (
	"context"
	"net"
	"time"
)

// RawPeer is one end of a mesh connection played by hand: for tests and tools that must
// speak the protocol as some peer would (an impostor claiming a running peer's name, say).
// Routers never use it.
type RawPeer struct {
	Name     PeerName
	NickName string
	UID      uint64 // must be non-zero
	Password []byte // nil/empty: unencrypted
	Features map[string]string
	Timeout  time.Duration // whole-handshake deadline; zero: the router's default
}

// RawConn is a handshaken mesh connection: whole messages, sealed when encrypted. Any error
// is final.
type RawConn interface {
	Send(msg []byte) error
	// Receive returns the next message, valid until the next call.
	Receive() ([]byte, error)
	SetReadDeadline(t time.Time) error
	Close() error
}

// Handshake runs the handshake on nc as the dialling side and returns the connection. It
// takes ownership of nc: on error nc is closed.
func (p RawPeer) Handshake(nc net.Conn) (RawConn, error) {
	c, _, err := handshake(context.Background(), nc, handshakeParams{
		Name: p.Name, NickName: p.NickName, UID: p.UID, Password: p.Password,
		Features: p.Features, Outbound: true, Timeout: p.Timeout,
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}
