package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// refuseLinger bounds how long a refused connection is kept open for the peer to read why.
const refuseLinger = 500 * time.Millisecond

// errNameInUse: a peer claimed a name that is ours or belongs to a connected peer.
var errNameInUse = errors.New("name in use")

// Handshake feature carrying the incarnation start time (shown to a peer refused because
// its name is in use).
const featureStarted = "started"

// Handshake feature: "1" when the sender trusts our address (--trusted-subnets).
const featureTrusted = "trusted"

// meshConn is one established (handshaken) connection to a neighbour.
type meshConn struct {
	r        *Router
	c        *framedConn
	intro    remoteIntro
	outbound bool
	remote   string // remote address
	target   string // connection-maker target that dialled it ("" when inbound)
	since    time.Time

	sendq     chan []byte
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error

	established bool                   // guarded by r.mu
	refused     atomic.Pointer[string] // the peer's reason for refusing this connection
	sent, recvd atomic.Uint64
	lastRecv    atomic.Int64 // unix nanoseconds
}

type handshakeState struct {
	nc       net.Conn
	remote   string
	outbound bool
	target   string
	since    time.Time
}

func (c *meshConn) enqueue(msg []byte) bool {
	select {
	case <-c.done:
		return false
	default:
	}
	select {
	case c.sendq <- msg:
		return true
	default:
		return false
	}
}

func (c *meshConn) close(err error) {
	c.closeOnce.Do(func() {
		c.closeErr = err
		close(c.done)
		if c.c != nil {
			c.c.Close()
		}
	})
}

// startHandshake runs the handshake on nc in its own goroutine and registers the result.
// release (inbound only; may be nil) returns the admission slot when the handshake is over.
func (r *Router) startHandshake(nc net.Conn, outbound bool, target string, release func()) {
	if release == nil {
		release = func() {}
	}
	h := &handshakeState{nc: nc, remote: nc.RemoteAddr().String(), outbound: outbound, target: target, since: time.Now()}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		nc.Close()
		release()
		return
	}
	r.handshakes[h] = struct{}{}
	r.wg.Add(1)
	r.mu.Unlock()
	go func() {
		defer r.wg.Done()
		err := r.handshakeAndAdd(h)
		release()
		r.mu.Lock()
		delete(r.handshakes, h)
		if target != "" {
			r.attemptDoneLocked(target, err)
		}
		r.mu.Unlock()
		switch reason := refusalReason(err); {
		case err == nil || r.ctx.Err() != nil:
		case outbound:
			r.log.Info("connection failed", "addr", h.remote, "outbound", outbound, "err", err)
		case reason == "duplicate" || reason == "self":
			// Simultaneous dials: routine.
			r.log.Info("connection failed", "addr", h.remote, "outbound", outbound, "err", err)
		default:
			// Inbound failures are what a hostile source controls: rate-limited.
			r.refuseLog.Log(slog.LevelWarn, reason, "connection refused", "reason", reason, "addr", h.remote, "err", err)
		}
	}()
}

func (r *Router) handshakeParams(outbound bool, remote string) handshakeParams {
	timeout := r.cfg.HandshakeTimeout
	if !outbound {
		timeout = min(timeout, preAuthTimeout)
	}
	feats := map[string]string{}
	for k, v := range r.cfg.Features {
		feats[k] = v
	}
	feats[featureStarted] = strconv.FormatUint(r.topo.started, 10)
	// As Weave's "Trusted": whether we trust the address the peer connects from. The data
	// plane may skip encryption only when both ends trust each other.
	if r.trusts(remote) {
		feats[featureTrusted] = "1"
	}
	return handshakeParams{
		Name:     r.cfg.Name,
		NickName: r.cfg.NickName,
		UID:      r.cfg.UID,
		Password: r.cfg.Password,
		Features: feats,
		Outbound: outbound,
		Timeout:  timeout,
		Counters: &r.counters,
	}
}

func (r *Router) handshakeAndAdd(h *handshakeState) error {
	conn, intro, err := handshake(context.Background(), h.nc, r.handshakeParams(h.outbound, h.remote))
	if err != nil {
		return err
	}
	if h.target != "" && intro.Name != r.cfg.Name {
		r.mu.Lock()
		if t := r.targets[h.target]; t != nil {
			t.peer = intro.Name
		}
		r.mu.Unlock()
	}
	mc := &meshConn{
		r: r, c: conn, intro: intro, outbound: h.outbound, remote: h.remote, target: h.target,
		since: time.Now(), sendq: make(chan []byte, sendQueueLen), done: make(chan struct{}),
	}
	mc.lastRecv.Store(time.Now().UnixNano())
	if err := r.addConn(mc); err != nil {
		r.mu.Lock()
		r.stats.ConnectionsRefused++
		r.mu.Unlock()
		if errors.Is(err, errNameInUse) {
			r.counters.NameInUse.Add(1)
		}
		// Tell the peer why, and let it finish its side of the handshake and close first
		// (in the duplicate and self cases it refuses the same connection), so it records
		// the reason rather than a broken pipe.
		reason := err.Error()
		if len(reason) > 255 {
			reason = reason[:255]
		}
		conn.SetWriteDeadline(time.Now().Add(refuseLinger))
		conn.Send(append([]byte{tagRefused, byte(len(reason))}, reason...))
		conn.SetReadDeadline(time.Now().Add(refuseLinger))
		for {
			m, rerr := conn.Receive()
			if rerr != nil || (len(m) > 0 && m[0] == tagRefused) {
				break // closed, or the peer refused it too
			}
		}
		conn.Close()
		return err
	}
	return nil
}

// addConn registers a handshaken connection, applying the identity checks, the connection
// limit and the duplicate tie-break, then starts its goroutines.
func (r *Router) addConn(mc *meshConn) error {
	in := mc.intro
	if in.Name == r.cfg.Name {
		if in.UID == r.cfg.UID {
			return ErrConnectToSelf
		}
		// Another peer says it is us. Nothing proves either claim in a plaintext mesh (and a
		// password only proves membership), so the running peer never yields to it: the
		// connection is refused. A real clone of this host is told why and keeps retrying
		// until someone gives it another name.
		return fmt.Errorf("%w: %s is our own name (their uid %d, nickname %q); if that is a clone of this host, give one of them another name (--name, or delete the peer-name file in its state dir)",
			errNameInUse, in.Name, in.UID, in.NickName)
	}
	var evicted *meshConn
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return ErrClosed
	}
	if old := r.conns[in.Name]; old != nil && old.intro.UID != in.UID {
		// Two incarnations under one name: a restarted peer whose old connection has not
		// died yet, an impostor, or two live peers with the same name. Keep the connection
		// we have (its peer is unharmed whatever the newcomer claims) and tell the newcomer
		// what we know, so a restarted peer can tell it is waiting for its old connection.
		heard := time.Since(time.Unix(0, old.lastRecv.Load()))
		r.mu.Unlock()
		started, _ := strconv.ParseUint(old.intro.Features[featureStarted], 10, 64)
		var w wbuf
		w.u8(tagNameInUse)
		w.u64(old.intro.UID)
		w.u64(started)
		w.u64(uint64(heard.Microseconds()))
		w.str8(old.intro.NickName)
		mc.c.SetWriteDeadline(time.Now().Add(time.Second))
		mc.c.Send(w.b)
		return fmt.Errorf("%w (%w): %s is already connected with uid %d, last heard %v ago; refusing uid %d",
			errNameInUse, ErrDuplicateConn, in.Name, old.intro.UID, heard.Round(time.Millisecond), in.UID)
	} else if old != nil {
		// Both ends see the same two ConnIDs, so both keep the same connection: the lower.
		switch {
		case in.ConnID < old.intro.ConnID:
			evicted = old
		case in.ConnID == old.intro.ConnID:
			r.mu.Unlock()
			old.close(ErrDuplicateConn)
			return fmt.Errorf("%w to %s (equal connection ids: both dropped)", ErrDuplicateConn, in.Name)
		default:
			r.mu.Unlock()
			return fmt.Errorf("%w to %s: keeping connection %x", ErrDuplicateConn, in.Name, old.intro.ConnID)
		}
	} else if len(r.conns) >= r.cfg.ConnLimit {
		r.mu.Unlock()
		return fmt.Errorf("%w (%d)", ErrConnLimit, r.cfg.ConnLimit)
	}
	if evicted != nil {
		r.removeConnLocked(evicted, ErrDuplicateConn)
	}
	mc.established = !r.cfg.OverlayConfirms
	r.conns[in.Name] = mc
	r.topo.notePeer(in.Name, in.NickName, in.UID)
	r.topo.setConn(connSummary{Name: in.Name, Addr: mc.remote, Outbound: mc.outbound, Established: mc.established})
	r.topo.connUp(in.Name)
	if mc.target != "" {
		if t := r.targets[mc.target]; t != nil {
			t.peer = in.Name
		}
	}
	r.afterChangeLocked()
	chans := r.channelList()
	r.wg.Add(2)
	r.mu.Unlock()
	if evicted != nil {
		r.log.Info("replacing duplicate connection", "peer", in.Name.String(), "kept_conn", in.ConnID, "dropped_conn", evicted.intro.ConnID)
		// The peer drops the same connection by the same rule; give it a moment to do so
		// (it may still be finishing that handshake) rather than cutting it off mid-way.
		reason := fmt.Sprintf("%v: keeping connection %x", ErrDuplicateConn, in.ConnID)
		evicted.enqueue(append([]byte{tagRefused, byte(len(reason))}, reason...))
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			t := time.NewTimer(refuseLinger)
			defer t.Stop()
			select {
			case <-evicted.done:
			case <-t.C:
			case <-r.ctx.Done():
			}
			evicted.close(ErrDuplicateConn)
		}()
	}
	go mc.writeLoop()
	go mc.readLoop()
	r.log.Info("connection added", "peer", in.Name.String(), "nickname", in.NickName, "addr", mc.remote,
		"outbound", mc.outbound, "encrypted", in.Encrypted, "conn", in.ConnID)
	if ov := r.cfg.Overlay; ov != nil {
		ov.ConnectionUp(mc.info())
	}
	r.kickJoin()
	// A new neighbour gets every channel's full state at once (as in Weave).
	for _, ch := range chans {
		ch.sendFullState(in.Name)
	}
	return nil
}

// removeConnLocked forgets mc if it is still the registered connection for its peer.
func (r *Router) removeConnLocked(mc *meshConn, err error) bool {
	if r.conns[mc.intro.Name] != mc {
		return false
	}
	delete(r.conns, mc.intro.Name)
	r.topo.delConn(mc.intro.Name)
	r.stats.Terminations++
	if r.flushAt.IsZero() {
		r.flushAt = time.Now() // tell the mesh (and GC) now, not after the coalescing delay
	}
	r.connDownTargetLocked(mc, err)
	r.afterChangeLocked()
	return true
}

func (r *Router) connDown(mc *meshConn, err error) {
	if reason := mc.refused.Load(); reason != nil {
		err = fmt.Errorf("refused by peer: %s", *reason)
	}
	mc.close(err)
	r.mu.Lock()
	removed := r.removeConnLocked(mc, err)
	r.mu.Unlock()
	if removed {
		r.kick()
		r.log.Info("connection deleted", "peer", mc.intro.Name.String(), "addr", mc.remote, "err", err)
		if ov := r.cfg.Overlay; ov != nil {
			ov.ConnectionDown(mc.intro.Name, mc.intro.ConnID)
		}
	}
}

func (c *meshConn) writeLoop() {
	defer c.r.wg.Done()
	hb := time.NewTicker(c.r.cfg.HeartbeatInterval)
	defer hb.Stop()
	heartbeat := []byte{tagHeartbeat}
	for {
		var msg []byte
		select {
		case <-c.done:
			return
		case <-hb.C:
			msg = heartbeat
		case msg = <-c.sendq:
		}
		if err := c.c.Send(msg); err != nil {
			c.r.connDown(c, fmt.Errorf("send: %w", err))
			return
		}
		c.sent.Add(uint64(len(msg)))
	}
}

func (c *meshConn) readLoop() {
	defer c.r.wg.Done()
	timeout := 2 * c.r.cfg.HeartbeatInterval
	for {
		if err := c.c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
			c.r.connDown(c, fmt.Errorf("set read deadline: %w", err))
			return
		}
		msg, err := c.c.Receive()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				err = fmt.Errorf("%w: nothing received for %v", errHeartbeatTimeout, timeout)
			}
			c.r.connDown(c, err)
			return
		}
		c.recvd.Add(uint64(len(msg)))
		c.lastRecv.Store(time.Now().UnixNano())
		if err := c.r.dispatch(c, msg); err != nil {
			c.r.mu.Lock()
			c.r.stats.MalformedMessages++
			c.r.mu.Unlock()
			c.r.log.Warn("dropped bad message", "peer", c.intro.Name.String(), "err", err)
		}
	}
}

// dispatch handles one message from neighbour c. msg is only valid during the call.
func (r *Router) dispatch(c *meshConn, msg []byte) error {
	if len(msg) == 0 {
		return fmt.Errorf("%w: empty message", ErrMalformed)
	}
	from := c.intro.Name
	switch tag := msg[0]; tag {
	case tagHeartbeat:
		return nil
	case tagTopoUpdate, tagTopoBroadcast, tagTopoDigest, tagTopoRequest, tagTopoHash:
		r.mu.Lock()
		defer r.mu.Unlock()
		err := r.topo.handle(from, msg)
		r.afterChangeLocked()
		if err == nil && tag == tagTopoUpdate && !r.cfg.NoDiscovery {
			r.kick() // new peers may be new discovery targets
		}
		return err
	case tagGossip, tagGossipUnicast, tagGossipBroadcast:
		return r.handleGossip(from, msg)
	case tagNameInUse:
		return r.handleNameInUse(c, msg[1:])
	case tagRefused:
		rd := rbuf{b: msg[1:]}
		reason := rd.str8("reason", 255)
		if err := rd.end("refusal"); err != nil {
			return err
		}
		c.refused.Store(&reason)
		c.close(fmt.Errorf("refused by peer: %s", reason))
		return nil
	case tagOverlayControl:
		if ov := r.cfg.Overlay; ov != nil {
			ov.OverlayControl(from, c.intro.ConnID, msg[1:])
		}
		return nil
	default:
		return fmt.Errorf("%w: unknown tag %d", ErrMalformed, tag)
	}
}

// handleNameInUse: a neighbour refused us because a peer with our name and another UID is
// connected to it: our previous incarnation whose connection has not timed out yet, or
// another peer using our name. It is only logged: a neighbour's word (or an impostor's,
// through it) must never stop us; the connection maker retries with backoff.
func (r *Router) handleNameInUse(c *meshConn, p []byte) error {
	rd := rbuf{b: p}
	uid := rd.u64("uid")
	_ = rd.u64("started")
	heardAgo := time.Duration(rd.u64("heard")) * time.Microsecond
	nick := rd.str8("nickname", maxNickLen)
	if err := rd.end("name in use"); err != nil {
		return fmt.Errorf("name-in-use from %s: %w", c.intro.Name, err)
	}
	if uid == r.cfg.UID {
		return nil
	}
	r.refuseLog.Log(slog.LevelWarn, "name_in_use_remote", "name in use: a neighbour has a connection from another peer with our name; retrying (if it is our previous incarnation, its connection times out)",
		"peer", c.intro.Name.String(), "their_uid", uid, "their_nickname", nick, "last_heard", heardAgo)
	return nil
}
