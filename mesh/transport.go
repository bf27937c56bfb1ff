package mesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"
)

// Transport is how a Router reaches the network: TCPTransport in production, a MemNetwork in
// tests and simulations (no sockets, many routers in one process).
type Transport interface {
	Listen(addr string) (net.Listener, error)
	Dial(ctx context.Context, addr string) (net.Conn, error)
}

// TCPTransport is the production Transport.
type TCPTransport struct{}

// Listen implements Transport.
func (TCPTransport) Listen(addr string) (net.Listener, error) {
	var lc net.ListenConfig
	return lc.Listen(context.Background(), "tcp", addr)
}

// Dial implements Transport.
func (TCPTransport) Dial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// MemNetwork is an in-memory network of listeners reachable by "host:port", connected with
// net.Pipe. Each Router gets its own host through Transport(host).
type MemNetwork struct {
	mu        sync.Mutex
	listeners map[string]*memListener
	blocked   map[[2]string]bool
	conns     map[*memConn][2]string // live connections by (dialling host, listening host)
	nextPort  int
}

// NewMemNetwork returns an empty network.
func NewMemNetwork() *MemNetwork {
	return &MemNetwork{listeners: map[string]*memListener{}, blocked: map[[2]string]bool{}, conns: map[*memConn][2]string{}, nextPort: 40000}
}

// Transport returns a Transport whose connections originate from host (an IP literal).
func (n *MemNetwork) Transport(host string) Transport { return memTransport{n: n, host: host} }

// Block makes dials between hosts a and b fail, or allows them again. Blocking also cuts
// the connections already open between them: a network partition.
func (n *MemNetwork) Block(a, b string, blocked bool) {
	n.mu.Lock()
	n.blocked[[2]string{a, b}] = blocked
	n.blocked[[2]string{b, a}] = blocked
	var cut []*memConn
	if blocked {
		for c, hosts := range n.conns {
			if hosts == [2]string{a, b} || hosts == [2]string{b, a} {
				cut = append(cut, c)
				delete(n.conns, c)
			}
		}
	}
	n.mu.Unlock()
	for _, c := range cut {
		c.Close()
		c.peer.Close()
	}
}

type memTransport struct {
	n    *MemNetwork
	host string
}

func (t memTransport) Listen(addr string) (net.Listener, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("mem listen %q: %w", addr, err)
	}
	key := net.JoinHostPort(t.host, port)
	t.n.mu.Lock()
	defer t.n.mu.Unlock()
	if _, ok := t.n.listeners[key]; ok {
		return nil, fmt.Errorf("mem listen %s: address in use", key)
	}
	l := &memListener{n: t.n, addr: memAddr(key), ch: make(chan net.Conn), done: make(chan struct{})}
	t.n.listeners[key] = l
	return l, nil
}

func (t memTransport) Dial(ctx context.Context, addr string) (net.Conn, error) {
	t.n.mu.Lock()
	l := t.n.listeners[addr]
	host, _, _ := net.SplitHostPort(addr)
	blocked := t.n.blocked[[2]string{t.host, host}]
	t.n.nextPort++
	local := memAddr(net.JoinHostPort(t.host, strconv.Itoa(t.n.nextPort)))
	t.n.mu.Unlock()
	if l == nil || blocked {
		return nil, fmt.Errorf("mem dial %s: %w", addr, errConnRefused)
	}
	a, b := net.Pipe()
	client := &memConn{Conn: a, local: local, remote: l.addr}
	server := &memConn{Conn: b, local: l.addr, remote: local}
	client.peer, server.peer = server, client
	client.n, server.n = t.n, t.n
	t.n.mu.Lock()
	t.n.conns[client] = [2]string{t.host, host}
	t.n.mu.Unlock()
	select {
	case l.ch <- server:
		return client, nil
	case <-l.done:
		return nil, fmt.Errorf("mem dial %s: %w", addr, errConnRefused)
	case <-ctx.Done():
		return nil, fmt.Errorf("mem dial %s: %w", addr, ctx.Err())
	case <-time.After(5 * time.Second):
		return nil, fmt.Errorf("mem dial %s: accept backlog full", addr)
	}
}

var errConnRefused = errors.New("connection refused")

type memAddr string

func (a memAddr) Network() string { return "tcp" }
func (a memAddr) String() string  { return string(a) }

type memConn struct {
	net.Conn
	local, remote net.Addr
	peer          *memConn
	n             *MemNetwork
}

func (c *memConn) Close() error {
	c.n.mu.Lock()
	delete(c.n.conns, c)
	delete(c.n.conns, c.peer)
	c.n.mu.Unlock()
	return c.Conn.Close()
}

func (c *memConn) LocalAddr() net.Addr  { return c.local }
func (c *memConn) RemoteAddr() net.Addr { return c.remote }

type memListener struct {
	n    *MemNetwork
	addr memAddr
	ch   chan net.Conn
	once sync.Once
	done chan struct{}
}

func (l *memListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *memListener) Close() error {
	l.once.Do(func() {
		close(l.done)
		l.n.mu.Lock()
		delete(l.n.listeners, string(l.addr))
		l.n.mu.Unlock()
	})
	return nil
}

func (l *memListener) Addr() net.Addr { return l.addr }
