package mesh

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// memberlist on the mesh: hashicorp/memberlist's SWIM failure detector with a transport
// whose packets and streams are gossip unicasts on an internal channel, so they travel
// inside the encrypted mesh connections and are relayed along mesh routes. It opens no
// socket, and a NATed or firewalled peer is probed like any other.
//
// memberlist wants IP:port addresses; each peer gets a fixed fake one derived from its name
// (memberlistIP), and the transport maps it back.

// MemberlistTiming tunes memberlist's failure detector. Zero fields take the defaults.
type MemberlistTiming struct {
	ProbeInterval  time.Duration
	ProbeTimeout   time.Duration
	GossipInterval time.Duration
	PushPull       time.Duration
	SuspicionMult  int
	// JoinInterval is how often reachable mesh peers missing from memberlist are joined
	// (this is what re-merges a healed partition).
	JoinInterval time.Duration
}

// WAN-ish defaults: probes travel over TCP and possibly several relays, so timeouts are
// longer than memberlist's LAN preset; suspicion lasts several probe rounds so a slow link
// is not declared dead.
func defaultMemberlistTiming() MemberlistTiming {
	return MemberlistTiming{
		ProbeInterval:  3 * time.Second,
		ProbeTimeout:   2 * time.Second,
		GossipInterval: 500 * time.Millisecond,
		PushPull:       30 * time.Second,
		SuspicionMult:  6,
		JoinInterval:   5 * time.Second,
	}
}

// Liveness states of MemberStatus.State (memberlist's agreed view of a peer).
const (
	MemberAlive   = "alive"
	MemberSuspect = "suspect"
	MemberDead    = "dead"
	MemberLeft    = "left"
)

// MemberStatus is one peer's liveness and since when it has been in that state.
type MemberStatus struct {
	Peer  PeerName  `json:"peer"`
	State string    `json:"state"` // MemberAlive, MemberSuspect, MemberDead or MemberLeft
	Since time.Time `json:"since"`
}

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

var errStreamClosed = errors.New("mesh stream closed")

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

type memberlistState struct {
	r      *Router
	timing MemberlistTiming
	tr     *meshTransport
	ml     *memberlist.Memberlist
	kick   chan struct{}

	mu       sync.Mutex
	members  map[PeerName]*MemberStatus
	onChange []func(MemberStatus)
}

func (r *Router) setupMemberlist() error {
	timing := defaultMemberlistTiming()
	if o := r.cfg.MemberlistTiming; o != nil {
		set := func(d *time.Duration, v time.Duration) {
			if v > 0 {
				*d = v
			}
		}
		set(&timing.ProbeInterval, o.ProbeInterval)
		set(&timing.ProbeTimeout, o.ProbeTimeout)
		set(&timing.GossipInterval, o.GossipInterval)
		set(&timing.PushPull, o.PushPull)
		set(&timing.JoinInterval, o.JoinInterval)
		if o.SuspicionMult > 0 {
			timing.SuspicionMult = o.SuspicionMult
		}
	}
	s := &memberlistState{r: r, timing: timing, kick: make(chan struct{}, 1), members: map[PeerName]*MemberStatus{}}
	s.tr = newMeshTransport(r)
	g, err := r.newGossip(memberlistChannel, s.tr)
	if err != nil {
		return err
	}
	s.tr.gossip = g
	r.ml = s
	return nil
}

func (r *Router) startMemberlist() error {
	s := r.ml
	conf := memberlist.DefaultWANConfig()
	conf.Name = r.cfg.Name.String()
	conf.Transport = s.tr
	conf.AdvertiseAddr = memberlistIP(r.cfg.Name).String()
	conf.AdvertisePort = memberlistPort
	conf.BindPort = memberlistPort
	conf.ProbeInterval = s.timing.ProbeInterval
	conf.ProbeTimeout = s.timing.ProbeTimeout
	conf.GossipInterval = s.timing.GossipInterval
	conf.PushPullInterval = s.timing.PushPull
	conf.SuspicionMult = s.timing.SuspicionMult
	conf.TCPTimeout = 10 * time.Second
	conf.Events = s
	conf.Logger = log.New(memberlistLogWriter{r.cfg.Logger.With("component", "memberlist", "local", r.cfg.Name.String())}, "", 0)
	ml, err := memberlist.Create(conf)
	if err != nil {
		return fmt.Errorf("start memberlist: %w", err)
	}
	s.mu.Lock()
	s.ml = ml
	s.mu.Unlock()
	r.wg.Add(1)
	go s.joinLoop()
	return nil
}

func (r *Router) stopMemberlist() {
	if r.ml == nil {
		return
	}
	r.ml.mu.Lock()
	ml := r.ml.ml
	r.ml.mu.Unlock()
	if ml != nil {
		ml.Shutdown()
	}
	r.ml.tr.Shutdown()
}

// joinLoop joins reachable mesh peers that memberlist does not count as members: new
// neighbours, and after a partition heals, the other side.
func (s *memberlistState) joinLoop() {
	defer s.r.wg.Done()
	t := time.NewTicker(s.timing.JoinInterval)
	defer t.Stop()
	for {
		select {
		case <-s.r.ctx.Done():
			return
		case <-t.C:
		case <-s.kick:
		}
		var missing []string
		s.r.mu.Lock()
		reach := s.r.topo.routes().unicastAll
		s.r.mu.Unlock()
		s.mu.Lock()
		for p := range reach {
			if m := s.members[p]; m == nil || m.State == MemberDead || m.State == MemberLeft {
				missing = append(missing, p.String()+"/"+net.JoinHostPort(memberlistIP(p).String(), strconv.Itoa(memberlistPort)))
			}
		}
		ml := s.ml
		s.mu.Unlock()
		slices.Sort(missing)
		if len(missing) > 8 {
			missing = missing[:8] // memberlist's push-pull spreads the rest
		}
		if len(missing) > 0 && ml != nil {
			if _, err := ml.Join(missing); err != nil {
				s.r.log.Debug("memberlist join", "err", err)
			}
		}
		s.refreshSuspects(ml)
	}
}

// refreshSuspects picks up alive<->suspect transitions, which memberlist has no event for.
func (s *memberlistState) refreshSuspects(ml *memberlist.Memberlist) {
	if ml == nil {
		return
	}
	for _, n := range ml.Members() {
		st := MemberAlive
		if n.State == memberlist.StateSuspect {
			st = MemberSuspect
		}
		s.set(n.Name, st)
	}
}

func (s *memberlistState) set(name string, st string) {
	p, err := ParsePeerName(name)
	if err != nil || p == s.r.cfg.Name {
		return
	}
	s.mu.Lock()
	m := s.members[p]
	if m != nil && m.State == st {
		s.mu.Unlock()
		return
	}
	m = &MemberStatus{Peer: p, State: st, Since: time.Now()}
	s.members[p] = m
	cbs := slices.Clone(s.onChange)
	s.mu.Unlock()
	s.r.log.Info("peer liveness changed", "peer", p.String(), "state", st)
	for _, f := range cbs {
		f(*m)
	}
}

// NotifyJoin implements memberlist.EventDelegate.
func (s *memberlistState) NotifyJoin(n *memberlist.Node) { s.set(n.Name, MemberAlive) }

// NotifyLeave implements memberlist.EventDelegate.
func (s *memberlistState) NotifyLeave(n *memberlist.Node) {
	if n.State == memberlist.StateLeft {
		s.set(n.Name, MemberLeft)
		return
	}
	s.set(n.Name, MemberDead)
}

// NotifyUpdate implements memberlist.EventDelegate.
func (s *memberlistState) NotifyUpdate(n *memberlist.Node) {}

// Liveness returns memberlist's view of every peer it has seen (not ourselves), sorted.
// Empty when memberlist is disabled.
func (r *Router) Liveness() []MemberStatus { return r.livenessStatus() }

func (r *Router) livenessStatus() []MemberStatus {
	if r.ml == nil {
		return nil
	}
	r.ml.mu.Lock()
	defer r.ml.mu.Unlock()
	out := make([]MemberStatus, 0, len(r.ml.members))
	for _, m := range r.ml.members {
		out = append(out, *m)
	}
	slices.SortFunc(out, func(a, b MemberStatus) int { return cmpName(a.Peer, b.Peer) })
	return out
}

// OnLivenessChange registers f to be called when a peer's liveness changes. f must not
// block. It does nothing when memberlist is disabled.
func (r *Router) OnLivenessChange(f func(MemberStatus)) {
	if r.ml == nil {
		return
	}
	r.ml.mu.Lock()
	defer r.ml.mu.Unlock()
	r.ml.onChange = append(r.ml.onChange, f)
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
	streams := make([]*meshStream, 0, len(t.streams))
	for _, s := range t.streams {
		streams = append(streams, s)
	}
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

// meshStream is a reliable, ordered byte stream between two peers, carried by gossip
// unicasts. Mesh routes keep messages in order; a gap (a route change mid-stream, a dropped
// message) resets the stream, and memberlist retries.
type meshStream struct {
	t   *meshTransport
	key streamKey

	mu       sync.Mutex
	cond     *sync.Cond
	buf      []byte
	err      error // set once closed: reads drain buf, then return err
	recvSeq  uint64
	sendSeq  uint64
	deadline time.Time
	timer    *time.Timer
}

func newMeshStream(t *meshTransport, key streamKey) *meshStream {
	s := &meshStream{t: t, key: key}
	s.cond = sync.NewCond(&s.mu)
	return s
}

func (s *meshStream) header(kind byte) []byte {
	var w wbuf
	w.u8(kind)
	var f byte
	if s.key.dialled {
		f = 1
	}
	w.u8(f)
	w.u64(s.key.id)
	return w.b
}

// deliver appends data in sequence; on a gap or overrun it fails the stream and returns the
// error (the caller then closes it, outside the lock).
func (s *meshStream) deliver(seq uint64, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return nil
	}
	if seq != s.recvSeq || len(s.buf)+len(data) > mlStreamBuffer {
		err := fmt.Errorf("mesh stream %d from %s: out of order or overrun (seq %d, want %d)", s.key.id, s.key.peer, seq, s.recvSeq)
		return err
	}
	s.recvSeq++
	s.buf = append(s.buf, data...)
	s.cond.Broadcast()
	return nil
}

func (s *meshStream) Read(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.buf) == 0 && s.err == nil {
		if !s.deadline.IsZero() && !time.Now().Before(s.deadline) {
			return 0, deadlineError{}
		}
		s.cond.Wait()
	}
	if len(s.buf) == 0 {
		return 0, s.err
	}
	n := copy(p, s.buf)
	s.buf = s.buf[n:]
	return n, nil
}

func (s *meshStream) Write(p []byte) (int, error) {
	s.mu.Lock()
	if s.err != nil {
		err := s.err
		s.mu.Unlock()
		if err == io.EOF {
			err = errStreamClosed
		}
		return 0, err
	}
	s.mu.Unlock()
	written := 0
	for len(p) > 0 {
		n := min(len(p), mlChunk)
		s.mu.Lock()
		seq := s.sendSeq
		s.sendSeq++
		s.mu.Unlock()
		var w wbuf
		w.b = s.header(mlStreamData)
		w.u64(seq)
		w.b = append(w.b, p[:n]...)
		if err := s.t.gossip.GossipUnicast(s.key.peer, w.b); err != nil {
			return written, err
		}
		written += n
		p = p[n:]
	}
	return written, nil
}

// closeLocal ends the stream here without telling the peer.
func (s *meshStream) closeLocal(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	if s.timer != nil {
		s.timer.Stop()
	}
	s.cond.Broadcast()
	s.mu.Unlock()
	s.t.mu.Lock()
	if s.t.streams[s.key] == s {
		delete(s.t.streams, s.key)
	}
	s.t.mu.Unlock()
}

func (s *meshStream) Close() error {
	s.mu.Lock()
	already := s.err != nil
	s.mu.Unlock()
	if !already {
		s.t.gossip.GossipUnicast(s.key.peer, s.header(mlStreamClose))
	}
	s.closeLocal(errStreamClosed)
	return nil
}

func (s *meshStream) LocalAddr() net.Addr  { return memberlistAddr(s.t.r.cfg.Name) }
func (s *meshStream) RemoteAddr() net.Addr { return memberlistAddr(s.key.peer) }

func (s *meshStream) SetDeadline(t time.Time) error { return s.SetReadDeadline(t) }

// SetWriteDeadline is accepted and ignored: writes never block (they are queued).
func (s *meshStream) SetWriteDeadline(time.Time) error { return nil }

func (s *meshStream) SetReadDeadline(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deadline = t
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	if !t.IsZero() {
		s.timer = time.AfterFunc(time.Until(t), func() {
			s.mu.Lock()
			s.cond.Broadcast()
			s.mu.Unlock()
		})
	}
	s.cond.Broadcast()
	return nil
}

type deadlineError struct{}

func (deadlineError) Error() string   { return "mesh stream read deadline exceeded" }
func (deadlineError) Timeout() bool   { return true }
func (deadlineError) Temporary() bool { return true }

// kickJoin asks the join loop to run now (a new neighbour may be a new member).
func (r *Router) kickJoin() {
	if r.ml == nil {
		return
	}
	select {
	case r.ml.kick <- struct{}{}:
	default:
	}
}

// memberlistLogWriter turns memberlist's "[LEVEL] memberlist: text" lines into slog
// records at the matching level. Its errors are about peers (unreachable, timed out), which
// the failure detector handles, so they are logged as warnings.
type memberlistLogWriter struct{ log *slog.Logger }

func (w memberlistLogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level := slog.LevelDebug
	for prefix, l := range map[string]slog.Level{"[ERR]": slog.LevelWarn, "[WARN]": slog.LevelWarn, "[INFO]": slog.LevelInfo} {
		if strings.HasPrefix(line, prefix) {
			level = l
		}
	}
	if i := strings.Index(line, "memberlist: "); i >= 0 {
		line = line[i+len("memberlist: "):]
	}
	w.log.Log(context.Background(), level, line)
	return len(p), nil
}
