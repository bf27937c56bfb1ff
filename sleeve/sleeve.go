package sleeve

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weavemesh/weave/internal/logx"
	"github.com/weavemesh/weave/mesh"
	"github.com/weavemesh/weave/overlay"
	"github.com/weavemesh/weave/udp"
)

// Handshake feature keys the sleeve offers.
const (
	FeatureCiphers = "ciphers"
	FeaturePort    = "sleeve_port"
)

// Control messages over the mesh connection (SendOverlayControl).
const (
	msgHello = 1 // [kind][trusted 1][udp port 2]
)

// Mesh is what the sleeve needs from the control plane; *mesh.Router implements it.
type Mesh interface {
	SetEstablished(peer mesh.PeerName, connID uint64, established bool) error
	SendOverlayControl(peer mesh.PeerName, connID uint64, msg []byte) error
}

// Config configures a Sleeve.
type Config struct {
	// Name is our peer name. Required.
	Name mesh.PeerName
	// Bind is the UDP socket (on --port). Required; the sleeve closes it.
	Bind udp.Bind
	// Ciphers offered, most preferred first; nil: AES-GCM then secretbox. The first of
	// ours the peer also offers is used.
	Ciphers []string
	// DisableGSO: do not offer to take super-frames in pieces (FeatureGSO), nor send them
	// so; the router then cuts them into segments (for comparison in benchmarks).
	DisableGSO bool
	// Logger: nil discards.
	Logger *slog.Logger

	// Timing; zero values take the defaults below. Tests shorten them.
	FastHeartbeat time.Duration // until the connection is established both ways (100ms)
	SlowHeartbeat time.Duration // afterwards (1s)
	Timeout       time.Duration // no heartbeat for this long: not established (10s)
	ProbeTimeout  time.Duration // wait for one MTU probe's ack (100ms)
	ReprobeEvery  time.Duration // re-verify the path MTU, which can shrink silently (15s)
}

// Defaults of Config's timing.
const (
	DefaultFastHeartbeat = 100 * time.Millisecond
	DefaultSlowHeartbeat = time.Second
	DefaultTimeout       = 10 * time.Second
	DefaultProbeTimeout  = 100 * time.Millisecond
	DefaultReprobeEvery  = 15 * time.Second
)

// Stats counts what the sleeve did; counters only grow.
type Stats struct {
	overlay.Stats
	Replayed      uint64 // datagrams refused by the replay window
	AuthFailed    uint64 // datagrams that failed authentication (forged, corrupted, wrong key)
	UnknownSender uint64 // datagrams from a peer we have no connection with
	Malformed     uint64 // datagrams or records that do not decode
	Datagrams     uint64 // datagrams received
	GSOIncomplete uint64 // super-frames dropped incomplete: a piece lost, or late beyond the reassembly (gso.go)
	GSOBackoffs   uint64 // times a peer's reported losses turned GSO passthrough to it off for a while
	PMTUShrunk    uint64 // times a check of the path MTU in use mid-flow found a smaller one (pmtu.go checkPMTU)
}

// PeerInfo describes the sleeve's connection to a neighbour, for status.
type PeerInfo struct {
	ConnID      uint64
	Established bool   // heartbeats pass both ways and the path MTU is verified
	Cipher      string // "aes-gcm", "secretbox" or "none"
	MTU         int    // largest IP packet a container may send to this peer in one piece
	Endpoint    netip.AddrPort
	// Waiting says why the connection is not established yet: no common cipher, no UDP
	// heartbeats from the peer, the peer not hearing ours, or the path MTU being verified.
	Waiting string
}

// Sleeve is the userspace overlay. It implements mesh.OverlayHook and overlay.Forwarder.
//
// Goroutines: routineReceive (one per Bind) and, per neighbour, routineSend. All stop on
// Close; a neighbour's goroutine stops when its connection goes down.
type Sleeve struct {
	cfg     Config
	log     *slog.Logger
	bind    udp.Bind
	ciphers []string

	stats struct {
		overlay.Counters
		replayed, authFailed, unknown, malformed, datagrams atomic.Uint64
		gsoIncomplete, gsoBackoffs, pmtuShrunk              atomic.Uint64
	}
	asmPool chan []byte // reassembly buffers of super-frames

	// Neighbours by name: readers use the immutable snapshot, writers hold mu.
	peers atomic.Pointer[map[mesh.PeerName]*neighbour]

	mu       sync.Mutex
	mesh     Mesh
	recv     atomic.Pointer[recvBox] // set by Start
	byName   map[mesh.PeerName]*neighbour
	hellos   map[uint64][]byte // hellos that arrived before their ConnectionUp, by connID
	started  bool
	closed   bool
	done     chan struct{}
	wg       sync.WaitGroup
	closeErr error
	once     sync.Once
}

type recvBox struct{ r overlay.Receiver }

var (
	_ mesh.OverlayHook  = (*Sleeve)(nil)
	_ overlay.Forwarder = (*Sleeve)(nil)
)

// New returns a Sleeve; pass it as mesh.Config.Overlay (with OverlayConfirms) and its
// Features in mesh.Config.Features, then Start it once the mesh and the router exist.
func New(cfg Config) (*Sleeve, error) {
	if cfg.Name == mesh.UnknownPeerName || cfg.Bind == nil {
		return nil, errors.New("sleeve: Name and Bind are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.FastHeartbeat, DefaultFastHeartbeat)
	def(&cfg.SlowHeartbeat, DefaultSlowHeartbeat)
	def(&cfg.Timeout, DefaultTimeout)
	def(&cfg.ProbeTimeout, DefaultProbeTimeout)
	def(&cfg.ReprobeEvery, DefaultReprobeEvery)
	ciphers := cfg.Ciphers
	if len(ciphers) == 0 {
		ciphers = []string{CipherAESGCM, CipherSecretbox}
	}
	for _, c := range ciphers {
		if c != CipherAESGCM && c != CipherSecretbox {
			return nil, fmt.Errorf("sleeve: unknown cipher %q (want %s or %s)", c, CipherAESGCM, CipherSecretbox)
		}
	}
	s := &Sleeve{
		cfg: cfg, log: cfg.Logger, bind: cfg.Bind, ciphers: ciphers,
		byName:  map[mesh.PeerName]*neighbour{},
		hellos:  map[uint64][]byte{},
		done:    make(chan struct{}),
		asmPool: make(chan []byte, asmPoolLen),
	}
	s.peers.Store(&map[mesh.PeerName]*neighbour{})
	if p, ok := cfg.Bind.(udp.PathMTU); ok {
		// Everything goes out with DF: datagrams are sized to the verified path MTU, and an
		// EMSGSIZE tells us at once when the path shrinks.
		if err := p.SetDontFragment(true); err != nil {
			s.log.Warn("cannot set don't-fragment on the sleeve socket", logx.KeyErr, err)
		}
	}
	return s, nil
}

// Features returns the handshake features to add to mesh.Config.Features.
func (s *Sleeve) Features() map[string]string {
	f := map[string]string{
		FeatureCiphers: strings.Join(s.ciphers, " "),
		FeaturePort:    strconv.Itoa(int(s.bind.LocalAddr().Port())),
	}
	if !s.cfg.DisableGSO {
		f[FeatureGSO] = "1"
	}
	return f
}

// Start begins receiving and lets connections that came up before it proceed.
func (s *Sleeve) Start(m Mesh, recv overlay.Receiver) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started || s.closed {
		return
	}
	s.started, s.mesh = true, m
	s.recv.Store(&recvBox{recv})
	s.wg.Add(1)
	go s.routineReceive()
	for _, n := range s.byName {
		s.sendHelloLocked(n)
	}
}

// Close stops every goroutine and closes the socket; idempotent.
func (s *Sleeve) Close() error {
	s.once.Do(func() {
		s.mu.Lock()
		s.closed = true
		close(s.done)
		for _, n := range s.byName {
			n.stop()
		}
		s.mu.Unlock()
		s.closeErr = s.bind.Close()
		s.wg.Wait()
	})
	return s.closeErr
}

// Stats returns the counters.
func (s *Sleeve) Stats() Stats {
	return Stats{
		Stats:    s.stats.Snapshot(),
		Replayed: s.stats.replayed.Load(), AuthFailed: s.stats.authFailed.Load(),
		UnknownSender: s.stats.unknown.Load(), Malformed: s.stats.malformed.Load(),
		Datagrams: s.stats.datagrams.Load(), GSOIncomplete: s.stats.gsoIncomplete.Load(),
		GSOBackoffs: s.stats.gsoBackoffs.Load(), PMTUShrunk: s.stats.pmtuShrunk.Load(),
	}
}

// PeerInfo returns the state of the connection to peer.
func (s *Sleeve) PeerInfo(peer mesh.PeerName) (PeerInfo, bool) {
	n := (*s.peers.Load())[peer]
	if n == nil {
		// Not ready, so not in the readers' snapshot; its fields are guarded by s.mu.
		s.mu.Lock()
		defer s.mu.Unlock()
		n = s.byName[peer]
	}
	if n == nil {
		return PeerInfo{}, false
	}
	info := PeerInfo{ConnID: n.connID, Established: n.path.established.Load(), Cipher: cipherNone}
	if ep := n.path.ep.Load(); ep != nil {
		info.Endpoint = *ep
	}
	if n.crypto.cipher != "" {
		info.Cipher = n.crypto.cipher
	}
	if mf := n.maxFrame(); mf > 0 {
		info.MTU = mf - 14
	}
	if !info.Established {
		info.Waiting = n.waiting()
	}
	return info, true
}

// publishLocked replaces the readers' snapshot. Must hold s.mu.
func (s *Sleeve) publishLocked() {
	m := make(map[mesh.PeerName]*neighbour, len(s.byName))
	for k, v := range s.byName {
		if v.handshake.ready {
			m[k] = v
		}
	}
	s.peers.Store(&m)
}

// ConnectionUp implements mesh.OverlayHook.
func (s *Sleeve) ConnectionUp(ci mesh.ConnInfo) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	if old := s.byName[ci.Peer]; old != nil {
		old.stop()
	}
	n := newNeighbour(s, ci)
	s.byName[ci.Peer] = n
	s.publishLocked() // the old one, if any, is gone
	if s.started {
		s.sendHelloLocked(n)
	}
	if h, ok := s.hellos[ci.ConnID]; ok {
		delete(s.hellos, ci.ConnID)
		s.helloLocked(n, h)
	}
}

// ConnectionDown implements mesh.OverlayHook.
func (s *Sleeve) ConnectionDown(peer mesh.PeerName, connID uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.hellos, connID)
	n := s.byName[peer]
	if n == nil || n.connID != connID {
		return
	}
	n.stop()
	delete(s.byName, peer)
	s.publishLocked()
}

// OverlayControl implements mesh.OverlayHook.
func (s *Sleeve) OverlayControl(peer mesh.PeerName, connID uint64, msg []byte) {
	if len(msg) == 0 || msg[0] != msgHello {
		s.stats.malformed.Add(1)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	n := s.byName[peer]
	if n == nil || n.connID != connID {
		if len(s.hellos) < 1024 {
			s.hellos[connID] = slices.Clone(msg) // ConnectionUp is on its way
		}
		return
	}
	s.helloLocked(n, msg)
}

func (s *Sleeve) sendHelloLocked(n *neighbour) {
	msg := make([]byte, 4)
	msg[0] = msgHello
	if n.info.Trusted {
		msg[1] = 1
	}
	binary.BigEndian.PutUint16(msg[2:4], s.bind.LocalAddr().Port())
	if err := s.mesh.SendOverlayControl(n.name, n.connID, msg); err != nil {
		s.log.Debug("cannot send sleeve hello", logx.KeyPeer, n.name.String(), logx.KeyErr, err)
	}
	n.handshake.helloSent = true
	s.maybeStartLocked(n)
}

// helloLocked takes the peer's hello: its UDP port and whether it trusts us. Must hold s.mu.
func (s *Sleeve) helloLocked(n *neighbour, msg []byte) {
	if len(msg) < 4 || n.handshake.helloRecv {
		s.stats.malformed.Add(1)
		return
	}
	n.handshake.helloRecv = true
	n.handshake.theyTrust = msg[1] == 1
	port := binary.BigEndian.Uint16(msg[2:4])
	if n.info.RemoteAddr == nil || port == 0 {
		s.stats.malformed.Add(1)
		return
	}
	if ap, err := netip.ParseAddrPort(n.info.RemoteAddr.String()); err == nil {
		ep := netip.AddrPortFrom(ap.Addr().Unmap(), port)
		n.path.ep.Store(&ep)
	}
	s.maybeStartLocked(n)
}

// maybeStartLocked starts the neighbour once both hellos have passed: then both ends know
// whether the other trusts them, and so agree on sealing. Must hold s.mu.
func (s *Sleeve) maybeStartLocked(n *neighbour) {
	if !n.handshake.helloSent || !n.handshake.helloRecv || n.handshake.ready || s.closed {
		return
	}
	if err := n.setupCrypto(s.ciphers); err != nil {
		s.log.Error("no data path to peer", logx.KeyPeer, n.name.String(), logx.KeyErr, err)
		n.path.problem.Store(err.Error())
		return
	}
	if n.path.ep.Load() == nil {
		s.log.Error("no UDP address for peer", logx.KeyPeer, n.name.String(), logx.KeyAddr, n.info.RemoteAddr)
		n.path.problem.Store("no UDP address for the peer")
		return
	}
	n.path.problem.Store("") // an earlier attempt's reason (no UDP address yet) is history
	n.handshake.ready = true
	s.publishLocked()
	s.wg.Add(1)
	go n.routineSend()
	s.log.Info("sleeve connection starting", logx.KeyPeer, n.name.String(), logx.KeyAddr, n.path.ep.Load().String(),
		logx.KeyCipher, n.crypto.cipher, logx.KeyConn, n.connID)
}

// Forward implements overlay.Forwarder.
func (s *Sleeve) Forward(hop mesh.PeerName, frames []overlay.Frame) {
	n := (*s.peers.Load())[hop]
	if n == nil || !n.path.established.Load() {
		s.stats.AddOut(0, 0, uint64(len(frames)))
		return
	}
	n.forward(frames)
}

// MaxFrame implements overlay.Forwarder.
func (s *Sleeve) MaxFrame(hop mesh.PeerName) int {
	n := (*s.peers.Load())[hop]
	if n == nil || !n.path.established.Load() {
		return 0
	}
	return n.maxFrame()
}

func isClosed(err error) bool { return errors.Is(err, net.ErrClosed) }
