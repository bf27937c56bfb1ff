package mesh

// The memberlist transport: memberlist's packets and streams as gossip unicasts on an
// internal channel, so they travel inside the encrypted mesh connections and are relayed
// along mesh routes.
//
// memberlist wants IP:port addresses; each peer gets a fixed fake one derived from its name
// (memberlistIP), and the transport maps it back.

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

const (
	memberlistChannel = "mesh.memberlist"
	memberlistPort    = 6783
	mlPacket          = 0
	mlStreamOpen      = 1
	mlStreamData      = 2
	mlStreamClose     = 3
	mlChunk           = 32 << 10
	mlStreamBuffer    = 8 << 20 // a stream holding more unread bytes is reset
)

// memberlistIP is the fake address memberlist knows peer by: fd77:6561:7665::/80 + name.
func memberlistIP(p PeerName) net.IP {
	ip := net.IP{0xfd, 0x77, 0x65, 0x61, 0x76, 0x65, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	b := p.Bytes()
	copy(ip[10:], b[:])
	return ip
}

func peerFromMemberlistAddr(addr string) (PeerName, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, fmt.Errorf("memberlist address %q: %w", addr, err)
	}
	ip := net.ParseIP(host).To16()
	if ip == nil || !slices.Equal(ip[:10], memberlistIP(0)[:10]) {
		return 0, fmt.Errorf("memberlist address %q is not a mesh address", addr)
	}
	return PeerNameFromBytes(ip[10:]), nil
}

// meshTransport implements memberlist.NodeAwareTransport over the mesh.
type meshTransport struct {
	r      *Router
	gossip Gossip

	packetCh chan *memberlist.Packet
	streamCh chan net.Conn

	mu      sync.Mutex
	closed  bool
	nextID  uint64
	streams map[streamKey]*meshStream
}

type streamKey struct {
	peer    PeerName
	id      uint64
	dialled bool // we opened it
}

var (
	_ memberlist.NodeAwareTransport = (*meshTransport)(nil)
	_ Gossiper                      = (*meshTransport)(nil)
)

func newMeshTransport(r *Router) *meshTransport {
	return &meshTransport{
		r:        r,
		packetCh: make(chan *memberlist.Packet, 1024),
		streamCh: make(chan net.Conn, 64),
		streams:  map[streamKey]*meshStream{},
	}
}

// FinalAdvertiseAddr implements memberlist.Transport.
func (t *meshTransport) FinalAdvertiseAddr(string, int) (net.IP, int, error) {
	return memberlistIP(t.r.cfg.Name), memberlistPort, nil
}

// WriteTo implements memberlist.Transport.
func (t *meshTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	p, err := peerFromMemberlistAddr(addr)
	if err != nil {
		return time.Time{}, err
	}
	return t.writeToPeer(b, p)
}

// WriteToAddress implements memberlist.NodeAwareTransport.
func (t *meshTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	return t.WriteTo(b, a.Addr)
}

func (t *meshTransport) writeToPeer(b []byte, p PeerName) (time.Time, error) {
	msg := make([]byte, 1+len(b))
	msg[0] = mlPacket
	copy(msg[1:], b)
	// Like UDP, a packet without a route is lost, not an error: memberlist treats a send
	// error as a local fault and would never suspect the unreachable peer.
	_ = t.gossip.GossipUnicast(p, msg)
	return time.Now(), nil
}

// PacketCh implements memberlist.Transport.
func (t *meshTransport) PacketCh() <-chan *memberlist.Packet { return t.packetCh }

// StreamCh implements memberlist.Transport.
func (t *meshTransport) StreamCh() <-chan net.Conn { return t.streamCh }

// DialTimeout implements memberlist.Transport. Opening is asynchronous: the stream exists
// as soon as the open message is sent, as with a TCP connection in SYN-sent.
func (t *meshTransport) DialTimeout(addr string, _ time.Duration) (net.Conn, error) {
	p, err := peerFromMemberlistAddr(addr)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, errStreamClosed
	}
	t.nextID++
	s := newMeshStream(t, streamKey{peer: p, id: t.nextID, dialled: true})
	t.streams[s.key] = s
	t.mu.Unlock()
	if err := t.gossip.GossipUnicast(p, s.header(mlStreamOpen)); err != nil {
		s.Close()
		return nil, fmt.Errorf("memberlist stream to %s: %w", p, err)
	}
	return s, nil
}

// DialAddressTimeout implements memberlist.NodeAwareTransport.
func (t *meshTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	return t.DialTimeout(a.Addr, timeout)
}

// Shutdown implements memberlist.Transport.
func (t *meshTransport) Shutdown() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	streams := slices.Collect(maps.Values(t.streams))
	t.mu.Unlock()
	for _, s := range streams {
		s.closeLocal(errStreamClosed)
	}
	return nil
}

// OnGossipUnicast implements Gossiper: packets and stream messages from peer src.
// Wire: kind(1), then for streams flags(1: bit0 = sender dialled) id(8) [seq(8) data].
func (t *meshTransport) OnGossipUnicast(src PeerName, msg []byte) error {
	if len(msg) == 0 {
		return fmt.Errorf("%w: empty memberlist message", ErrMalformed)
	}
	if msg[0] == mlPacket {
		pkt := &memberlist.Packet{Buf: slices.Clone(msg[1:]), From: memberlistAddr(src), Timestamp: time.Now()}
		t.mu.Lock()
		closed := t.closed
		t.mu.Unlock()
		if closed {
			return nil
		}
		select {
		case t.packetCh <- pkt:
		default:
			return errors.New("memberlist packet queue full: dropped")
		}
		return nil
	}
	rd := rbuf{b: msg[1:]}
	flags := rd.u8("stream flags")
	id := rd.u64("stream id")
	if rd.err != nil {
		return fmt.Errorf("memberlist stream message: %w", rd.err)
	}
	// The sender dialled means the stream is the one we accepted, and vice versa.
	key := streamKey{peer: src, id: id, dialled: flags&1 == 0}
	t.mu.Lock()
	s := t.streams[key]
	switch msg[0] {
	case mlStreamOpen:
		if s != nil || t.closed || key.dialled {
			t.mu.Unlock()
			return nil
		}
		s = newMeshStream(t, key)
		t.streams[key] = s
		t.mu.Unlock()
		select {
		case t.streamCh <- s:
		default:
			s.Close()
			return errors.New("memberlist stream backlog full: refused")
		}
		return nil
	case mlStreamData:
		t.mu.Unlock()
		seq := rd.u64("stream seq")
		if rd.err != nil {
			return fmt.Errorf("memberlist stream data: %w", rd.err)
		}
		if s != nil {
			if err := s.deliver(seq, rd.rest()); err != nil {
				s.Close()
				return err
			}
		}
		return nil
	case mlStreamClose:
		t.mu.Unlock()
		if s != nil {
			s.closeLocal(io.EOF)
		}
		return nil
	default:
		t.mu.Unlock()
		return fmt.Errorf("%w: memberlist message kind %d", ErrMalformed, msg[0])
	}
}

// The other Gossiper methods: memberlist does its own gossip.
func (t *meshTransport) OnGossipBroadcast(PeerName, []byte) (GossipData, error) { return nil, nil }
func (t *meshTransport) Gossip() GossipData                                     { return nil }
func (t *meshTransport) OnGossip([]byte) (GossipData, error)                    { return nil, nil }

func memberlistAddr(p PeerName) net.Addr {
	return &net.TCPAddr{IP: memberlistIP(p), Port: memberlistPort}
}
