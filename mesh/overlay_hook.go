package mesh

// The interface between the mesh connections and a data-plane overlay (sleeve, fastdp):
// connection events, per-connection keys, overlay control messages, and the overlay's say
// over whether a connection carries data.

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
)

// OverlayHook lets a data-plane overlay follow the mesh connections. Methods are called
// without locks held and must not block.
type OverlayHook interface {
	// ConnectionUp: a connection to a peer was established at TCP level. With
	// Config.OverlayConfirms the mesh waits for SetEstablished before routing data over it.
	ConnectionUp(ConnInfo)
	// ConnectionDown: the connection is gone.
	ConnectionDown(peer PeerName, connID uint64)
	// OverlayControl: a message the peer's overlay sent with SendOverlayControl. msg is
	// only valid during the call.
	OverlayControl(peer PeerName, connID uint64, msg []byte)
}

// ConnInfo describes a connection to an overlay.
type ConnInfo struct {
	Peer       PeerName
	NickName   string
	UID        uint64
	ConnID     uint64 // identical on both ends: a shared id for heartbeats and key ids
	Outbound   bool
	RemoteAddr net.Addr
	LocalAddr  net.Addr
	Encrypted  bool
	// Trusted: each end's address is inside the other's trusted subnets, so the data
	// plane may skip encryption with it (the control plane stays encrypted).
	Trusted          bool
	SendKey, RecvKey [KeySize]byte
	HasKeys          bool
	Features         map[string]string
}

func (c *meshConn) info() ConnInfo {
	ci := ConnInfo{
		Peer: c.intro.Name, NickName: c.intro.NickName, UID: c.intro.UID, ConnID: c.intro.ConnID,
		Outbound: c.outbound, RemoteAddr: c.c.RemoteAddr(), LocalAddr: c.c.LocalAddr(),
		Encrypted: c.intro.Encrypted, Features: c.intro.Features,
	}
	ci.SendKey, ci.RecvKey, ci.HasKeys = c.c.DataKeys()
	ci.Trusted = c.r.trusts(c.remote) && c.intro.Features[featureTrusted] == "1"
	return ci
}

// trusts reports whether addr (ip:port) is inside one of our trusted subnets.
func (r *Router) trusts(addr string) bool {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return false
	}
	return slices.ContainsFunc(r.cfg.TrustedSubnets, func(p netip.Prefix) bool { return p.Contains(ap.Addr().Unmap()) })
}

// overlayConnLocked returns the connection to peer if it is still the one with connID, else
// nil: the overlay may act on a connection that has since been replaced.
func (r *Router) overlayConnLocked(peer PeerName, connID uint64) *meshConn {
	if c := r.conns[peer]; c != nil && c.intro.ConnID == connID {
		return c
	}
	return nil
}

// SetEstablished marks the connection to peer (with connID) as established, or not, for
// data: the overlay calls it when its own heartbeats pass both ways, or stop.
func (r *Router) SetEstablished(peer PeerName, connID uint64, established bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.overlayConnLocked(peer, connID)
	if c == nil {
		return fmt.Errorf("set established %s/%x: %w", peer, connID, ErrUnknownConn)
	}
	if c.established == established {
		return nil
	}
	c.established = established
	r.topo.setConn(connSummary{Name: peer, Addr: c.remote, Outbound: c.outbound, Established: established})
	r.afterChangeLocked()
	return nil
}

// SendOverlayControl sends a small message to the overlay of peer over the connection
// connID. It never blocks; it fails if the connection is gone or its queue is full.
func (r *Router) SendOverlayControl(peer PeerName, connID uint64, msg []byte) error {
	r.mu.Lock()
	c := r.overlayConnLocked(peer, connID)
	r.mu.Unlock()
	if c == nil {
		return fmt.Errorf("overlay control to %s/%x: %w", peer, connID, ErrUnknownConn)
	}
	m := make([]byte, 1+len(msg))
	m[0] = tagOverlayControl
	copy(m[1:], msg)
	if !c.enqueue(m) {
		return fmt.Errorf("overlay control to %s: send queue full or closed", peer)
	}
	return nil
}

// DropConnection closes the connection to peer with connID, for an overlay whose data path
// to that peer failed (Weave: "no working forwarders"). The connection maker retries it
// with backoff as for any other failure.
func (r *Router) DropConnection(peer PeerName, connID uint64, reason error) error {
	r.mu.Lock()
	c := r.overlayConnLocked(peer, connID)
	r.mu.Unlock()
	if c == nil {
		return fmt.Errorf("drop connection %s/%x: %w", peer, connID, ErrUnknownConn)
	}
	r.connDown(c, fmt.Errorf("dropped by the overlay: %w", reason))
	return nil
}
