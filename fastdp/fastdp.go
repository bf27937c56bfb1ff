package fastdp

import (
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weavemesh/weave/internal/logx"
	"github.com/weavemesh/weave/mesh"
	"github.com/weavemesh/weave/overlay"
)

const (
	// DefaultPort is the VXLAN UDP port: the mesh port (6783) + 1.
	DefaultPort = 6784
	// FeatureKey is the handshake feature under which a peer offers fastdp; its value names
	// the encapsulation, port and VNI, which must match on both ends.
	FeatureKey = "fastdp"
	// OverheadIPv4 and OverheadIPv6 are what VXLAN adds to each frame on the underlay:
	// outer IP + UDP (8) + VXLAN (8) + inner Ethernet (14).
	OverheadIPv4 = 20 + 8 + 8 + 14
	OverheadIPv6 = 40 + 8 + 8 + 14
	// recentSeqs is how many heartbeat rounds back an ack is still accepted.
	recentSeqs = 64
	// DefaultMaxMACs bounds the remote MACs Learn keeps (and the kernel FDB with them), so
	// a peer spraying source MACs cannot grow them without end.
	DefaultMaxMACs = 1 << 16
)

// DefaultDevice is the VXLAN device name for a port when Config.Device is empty; Cleanup
// takes it.
func DefaultDevice(port int) string { return "vxlan-" + strconv.Itoa(port) }

// VNIFor derives a VXLAN network identifier from a mesh identity, so that several meshes
// sharing a host (or an underlay) on the same UDP port never exchange frames. Feed it a
// non-secret name (the mesh or network name, the IPAM range), never the password: the VNI
// travels in clear in every packet. The result is in [1, 2^24-2]; 0 and 2^24-1 are avoided.
func VNIFor(id string) uint32 {
	h := fnv.New32a()
	h.Write([]byte("weave-fastdp-vni\x00" + id))
	return 1 + h.Sum32()%(1<<24-2)
}

// MTUFor is the VXLAN device MTU for an underlay link MTU.
func MTUFor(underlayMTU int, ipv6 bool) int {
	if ipv6 {
		return underlayMTU - OverheadIPv6
	}
	return underlayMTU - OverheadIPv4
}

// Control sends overlay control messages to a peer over the mesh connection; *mesh.Router
// implements it.
type Control interface {
	SendOverlayControl(peer mesh.PeerName, connID uint64, msg []byte) error
}

// Config configures New.
type Config struct {
	// Name is this peer's name (it signs our heartbeats).
	Name mesh.PeerName
	// Bridge is the Linux bridge the VXLAN device joins (it must exist).
	Bridge string
	// Device is the VXLAN device name; default "vxlan-<Port>".
	Device string
	// Port is the VXLAN UDP port; default DefaultPort.
	Port int
	// VNI is the VXLAN network identifier; default VNIFor("").
	VNI uint32
	// MTU of the VXLAN device; 0 derives it from the underlay (the link of the default
	// route, or of LocalAddr) minus OverheadIPv4/6.
	MTU int
	// LocalAddr is the underlay source address of VXLAN packets; invalid: the kernel picks.
	LocalAddr netip.Addr
	// Isolate names bridge ports that must never exchange frames with the VXLAN port: the
	// router's TAP. Frames the router injects from sleeve must not leave again through
	// VXLAN, and frames that arrived through VXLAN must not reach the router as if a local
	// container sent them. Both the VXLAN port and these ports are made "isolated".
	Isolate []string
	// Netns is the network namespace (a path, or a name under /var/run/netns) to work in;
	// empty: the caller's.
	Netns string
	// Timing of heartbeats and hysteresis; zero fields take the defaults.
	Timing Timing
	// OnChange is called when a peer's State, Reason or Active changes. Calls come from one
	// goroutine, in order, without locks held. When a pair goes to fastdp the kernel is
	// programmed before the call; when it leaves, the call comes first and the kernel
	// entries go after it returns: the switch flips to sleeve before the kernel stops.
	OnChange func(PeerStatus)
	// MaxMACs bounds the MACs Learn records; default DefaultMaxMACs. Beyond it new MACs
	// are refused and counted (the bridge then floods them, which stays correct).
	MaxMACs int
	// Kernel replaces the Linux VXLAN device (tests: FakeNet).
	Kernel Kernel
	// Filter admits VXLAN datagrams from the peers fastdp runs with, and only from them.
	// nil: no filter (unit tests over FakeNet); the daemon always gives one (package
	// guard), installed before the device exists.
	Filter Filter
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil: time.Now.
	Now func() time.Time
}

// Peer describes a mesh connection to give to fastdp.
type Peer struct {
	Name   mesh.PeerName
	ConnID uint64
	// Addr is the peer's underlay address (its VXLAN endpoint).
	Addr netip.Addr
	// LocalAddr is our address on this connection, as we see it; used to detect NAT.
	LocalAddr netip.Addr
	// NeedsEncryption: the pair runs with a password and is not trusted; it stays on the
	// encrypted sleeve (ReasonEncryption). This is where IPsec would plug in.
	NeedsEncryption bool
	// Feature is the peer's FeatureKey value; "" means it does not offer fastdp.
	Feature string
}

// Stats counts heartbeat traffic and what was refused.
type Stats struct {
	BeatsSent, BeatsReceived, AcksReceived uint64
	// BadFrames and BadControl count hostile or corrupt input that was refused.
	BadFrames, BadControl uint64
	// Unknown counts heartbeats and acks from peers we have no connection with (or stale).
	Unknown       uint64
	KernelErrors  uint64
	MACsRefused   uint64
	Activations   uint64
	Deactivations uint64
	// Kernel are the device's own counters since New: the frames the kernel carried for
	// us, containers' data included. KernelCounted is false when the Kernel cannot read
	// them (see StatsKernel); Kernel is then zero.
	Kernel        LinkStats
	KernelCounted bool
}

// Overlay maps the counters onto the overlay-neutral form the daemon reports and exports:
// the kernel's frames and bytes when it counts them (heartbeats are among them), else the
// heartbeats alone; drops in are refused input and the device's receive drops, drops out
// are failed kernel programming and the device's transmit drops (frames for a MAC whose
// peer is on sleeve, or for nobody).
func (s Stats) Overlay() overlay.Stats {
	o := overlay.Stats{
		FramesIn: s.BeatsReceived, FramesOut: s.BeatsSent,
		DropsIn: s.BadFrames + s.BadControl + s.Unknown, DropsOut: s.KernelErrors,
	}
	if s.KernelCounted {
		o.FramesIn, o.BytesIn = s.Kernel.RxFrames, s.Kernel.RxBytes
		o.FramesOut, o.BytesOut = s.Kernel.TxFrames, s.Kernel.TxBytes
		o.DropsIn += s.Kernel.RxDropped
		o.DropsOut += s.Kernel.TxDropped
	}
	return o
}

type peer struct {
	Peer
	h        *health // nil when off
	off      Reason
	detail   string
	active   bool
	reported PeerStatus
	leaving  bool // reported inactive, kernel entries still to remove
	seen     bool // reported at least once
}

// FastDP runs the kernel data path: the VXLAN device, per-peer FDB entries and heartbeats.
type FastDP struct {
	cfg     Config
	log     *slog.Logger
	k       Kernel
	t       Timing
	now     func() time.Time
	feature string

	mu    sync.Mutex
	peers map[mesh.PeerName]*peer
	macs  map[[6]byte]mesh.PeerName
	// allowed counts the pairs with heartbeats per underlay address (two peers behind one
	// NAT share one), so the filter hears only the first allow and the last withdrawal.
	allowed map[netip.Addr]int
	ctl     Control
	seq     uint64 // last heartbeat round sent
	closed  bool

	beatsSent, beatsRecv, acksRecv, badFrames, badControl, unknown, kernelErrs atomic.Uint64
	activations, deactivations, macsRefused                                    atomic.Uint64

	// The device's counters at New (so Stats counts from there, like every other counter)
	// and at the last successful read (what Stats shows once the device cannot be read).
	kmu          sync.Mutex
	kbase, klast LinkStats

	startOnce sync.Once
	closeOnce sync.Once
	stop      chan struct{}
	wg        sync.WaitGroup
}

var _ mesh.OverlayHook = (*FastDP)(nil)

// New creates (or adopts) the VXLAN device and returns a FastDP that is not running yet:
// Start it with the mesh. It returns ErrNoKernelSupport (wrapped) when the kernel cannot
// do VXLAN.
func New(cfg Config) (*FastDP, error) {
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	if cfg.Port < 1 || cfg.Port > 65535 {
		return nil, fmt.Errorf("fastdp: udp port %d out of range", cfg.Port)
	}
	if cfg.VNI == 0 {
		cfg.VNI = VNIFor("")
	}
	if cfg.VNI >= 1<<24 {
		return nil, fmt.Errorf("fastdp: vni %d does not fit in 24 bits", cfg.VNI)
	}
	if cfg.Device == "" {
		cfg.Device = DefaultDevice(cfg.Port)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxMACs <= 0 {
		cfg.MaxMACs = DefaultMaxMACs
	}
	k := cfg.Kernel
	if k == nil {
		if cfg.Bridge == "" {
			return nil, errors.New("fastdp: no bridge given")
		}
		var err error
		if k, err = openKernel(cfg); err != nil {
			return nil, err
		}
	}
	f := &FastDP{
		cfg: cfg, log: cfg.Logger, k: k, t: cfg.Timing.withDefaults(), now: cfg.Now,
		feature: fmt.Sprintf("vxlan/%d/%d", cfg.Port, cfg.VNI),
		peers:   map[mesh.PeerName]*peer{}, macs: map[[6]byte]mesh.PeerName{}, allowed: map[netip.Addr]int{},
		seq:  rand.Uint64() >> 1, // a fresh start per process, so stale acks do not match
		stop: make(chan struct{}),
	}
	if sk, ok := k.(StatsKernel); ok {
		if st, err := sk.LinkStats(); err == nil {
			f.kbase = st
		} else {
			f.log.Warn("cannot read the device's counters", logx.KeyErr, err)
		}
	}
	device := cfg.Device
	if cfg.Kernel != nil {
		device = fmt.Sprintf("%T", cfg.Kernel) // another kernel path (OVS): no device of ours
	}
	f.log.Info("fastdp ready", logx.KeyDevice, device, logx.KeyPort, cfg.Port, logx.KeyMode, fmt.Sprintf("vxlan vni %d", cfg.VNI), logx.KeyMTU, k.MTU())
	return f, nil
}

// Features are the handshake features to advertise (merge them into mesh.Config.Features).
func (f *FastDP) Features() map[string]string { return map[string]string{FeatureKey: f.feature} }

// MTU is the VXLAN device MTU (the largest IP packet over fastdp).
func (f *FastDP) MTU() int { return f.k.MTU() }

// Start begins heartbeats; ctl carries the acknowledgements. Calling it again does nothing.
func (f *FastDP) Start(ctl Control) {
	f.startOnce.Do(func() {
		f.mu.Lock()
		f.ctl = ctl
		closed := f.closed
		f.mu.Unlock()
		if closed {
			return
		}
		f.wg.Add(2)
		go f.loop()
		go f.reader()
	})
}

// Close stops heartbeats and I/O; idempotent. The device and its FDB entries stay, so the
// kernel path keeps working across a restart; Cleanup removes the device.
func (f *FastDP) Close() error {
	var err error
	f.closeOnce.Do(func() {
		f.mu.Lock()
		f.closed = true
		f.mu.Unlock()
		close(f.stop)
		err = f.k.Close() // unblocks the reader
		f.wg.Wait()
	})
	return err
}

// ConnectionUp adds the peer of a new mesh connection (mesh.OverlayHook).
func (f *FastDP) ConnectionUp(ci mesh.ConnInfo) {
	p := Peer{Name: ci.Peer, ConnID: ci.ConnID, Addr: addrOf(ci.RemoteAddr), LocalAddr: addrOf(ci.LocalAddr),
		NeedsEncryption: ci.Encrypted && !ci.Trusted, Feature: ci.Features[FeatureKey]}
	if err := f.AddPeer(p); err != nil {
		f.log.Warn("peer not added", logx.KeyPeer, ci.Peer, logx.KeyErr, err)
	}
}

// ConnectionDown removes the peer (mesh.OverlayHook).
func (f *FastDP) ConnectionDown(peer mesh.PeerName, connID uint64) { f.RemovePeer(peer, connID) }

func addrOf(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	case *net.UDPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	}
	if a == nil {
		return netip.Addr{}
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// AddPeer starts fastdp towards a peer, or decides (with a Reason) that this pair stays on
// sleeve. A newer connection to the same peer replaces the older one's state.
func (f *FastDP) AddPeer(p Peer) error {
	if !p.Addr.IsValid() {
		return fmt.Errorf("fastdp: add peer %s: no underlay address", p.Name)
	}
	p.Addr = p.Addr.Unmap()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return errors.New("fastdp: closed")
	}
	if old := f.peers[p.Name]; old != nil {
		if old.ConnID == p.ConnID && old.Addr == p.Addr {
			return nil
		}
		f.removeLocked(old)
	}
	np := &peer{Peer: p}
	switch {
	case p.NeedsEncryption:
		np.off, np.detail = ReasonEncryption, "encrypted connection: fastdp has no IPsec yet, the pair stays on the encrypted sleeve"
	case p.Feature == "":
		np.off, np.detail = ReasonPeerNoFastdp, "the peer does not offer fastdp"
	case p.Feature != f.feature:
		np.off, np.detail = ReasonMismatch, fmt.Sprintf("the peer's fastdp is %q, ours %q", p.Feature, f.feature)
	default:
		np.h = newHealth(f.t, f.cfg.Port, f.now())
		// The filter opens before the first heartbeat goes out: the peer's answer must
		// get in, and nothing else from it could have before.
		if err := f.allowLocked(p.Addr, true); err != nil {
			f.kernelErrs.Add(1)
			return fmt.Errorf("fastdp: add peer %s: %w", p.Name, err)
		}
		if err := f.k.SetHeartbeatRemote(p.Addr, true); err != nil {
			f.kernelErrs.Add(1)
			f.kerr(f.allowLocked(p.Addr, false))
			return fmt.Errorf("fastdp: add peer %s: %w", p.Name, err)
		}
	}
	f.peers[p.Name] = np
	f.log.Debug("peer added", logx.KeyPeer, p.Name, logx.KeyAddr, p.Addr, logx.KeyReason, np.off)
	return nil
}

// RemovePeer forgets the peer's connection connID (a newer connection is left alone) and
// removes its kernel entries. No OnChange call follows: the connection is gone. After Close
// it does nothing: the entries stay with the device (see Close), and the mesh closing after
// us must not spend its shutdown on netlink.
func (f *FastDP) RemovePeer(name mesh.PeerName, connID uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return
	}
	if p := f.peers[name]; p != nil && p.ConnID == connID {
		f.removeLocked(p)
	}
}

func (f *FastDP) removeLocked(p *peer) {
	delete(f.peers, p.Name)
	if p.active {
		f.deactivateLocked(p)
	}
	if p.h != nil {
		f.kerr(f.k.SetHeartbeatRemote(p.Addr, false))
		f.kerr(f.allowLocked(p.Addr, false))
	}
}

// allowLocked opens (on) or closes the filter for one more or one fewer pair at addr.
func (f *FastDP) allowLocked(addr netip.Addr, on bool) error {
	n := f.allowed[addr]
	if !on {
		if n == 0 {
			return nil
		}
		if n > 1 {
			f.allowed[addr] = n - 1
			return nil
		}
		delete(f.allowed, addr)
	} else if f.allowed[addr] = n + 1; n > 0 {
		return nil
	}
	if f.cfg.Filter == nil {
		return nil
	}
	if err := f.cfg.Filter.Allow(addr, on); err != nil {
		if on {
			delete(f.allowed, addr) // not open: the next attempt tries again
		}
		return err
	}
	return nil
}

func (f *FastDP) kerr(err error) {
	if err != nil {
		f.kernelErrs.Add(1)
		f.log.Warn("kernel operation failed", logx.KeyErr, err)
	}
}

// Learn records that mac lives behind peer (l2switch learned it, or the mesh said so);
// call it for remote MACs only. While the pair is on fastdp the kernel gets a unicast FDB
// entry for it; otherwise a drop entry, so that frames for a MAC that sleeve carries are
// not flooded to every fastdp peer while the bridge does not know the MAC.
func (f *FastDP) Learn(mac net.HardwareAddr, name mesh.PeerName) {
	if len(mac) != 6 {
		return
	}
	m := [6]byte(mac)
	f.mu.Lock()
	defer f.mu.Unlock()
	old, ok := f.macs[m]
	if f.closed || ok && old == name {
		return
	}
	if !ok && len(f.macs) >= f.cfg.MaxMACs {
		f.macsRefused.Add(1)
		return
	}
	if ok {
		if oldDst, newDst := f.macDstLocked(old), f.macDstLocked(name); oldDst != newDst {
			f.kerr(f.k.DelMAC(m, oldDst))
		}
	}
	f.macs[m] = name
	f.kerr(f.k.SetMAC(m, f.macDstLocked(name)))
}

// macDstLocked is where the kernel sends frames for MACs behind peer: its endpoint while
// the pair is on fastdp, else nowhere (the invalid Addr: a drop entry).
func (f *FastDP) macDstLocked(name mesh.PeerName) netip.Addr {
	if p := f.peers[name]; p != nil && p.active {
		return p.Addr
	}
	return netip.Addr{}
}

// Forget removes what Learn recorded for mac.
func (f *FastDP) Forget(mac net.HardwareAddr) {
	if len(mac) != 6 {
		return
	}
	m := [6]byte(mac)
	f.mu.Lock()
	defer f.mu.Unlock()
	name, ok := f.macs[m]
	if !ok || f.closed {
		return
	}
	f.kerr(f.k.DelMAC(m, f.macDstLocked(name)))
	delete(f.macs, m)
}

// Active reports whether the kernel carries the traffic of the pair with peer.
func (f *FastDP) Active(name mesh.PeerName) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.peers[name]
	return p != nil && p.active
}

// MaxFrame is the largest Ethernet frame the kernel carries to peer, 0 when the pair is
// not on fastdp (the overlay.Forwarder convention).
func (f *FastDP) MaxFrame(name mesh.PeerName) int {
	if !f.Active(name) {
		return 0
	}
	return f.k.MTU() + ethHeaderLen
}

// Status returns the state of the pair with peer.
func (f *FastDP) Status(name mesh.PeerName) (PeerStatus, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.peers[name]
	if p == nil {
		return PeerStatus{}, false
	}
	return f.statusLocked(p), true
}

// Peers returns the state of every pair.
func (f *FastDP) Peers() []PeerStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]PeerStatus, 0, len(f.peers))
	for _, p := range f.peers {
		out = append(out, f.statusLocked(p))
	}
	return out
}

// Stats returns the counters.
func (f *FastDP) Stats() Stats {
	s := Stats{
		BeatsSent: f.beatsSent.Load(), BeatsReceived: f.beatsRecv.Load(), AcksReceived: f.acksRecv.Load(),
		BadFrames: f.badFrames.Load(), BadControl: f.badControl.Load(), Unknown: f.unknown.Load(),
		KernelErrors: f.kernelErrs.Load(), MACsRefused: f.macsRefused.Load(), Activations: f.activations.Load(), Deactivations: f.deactivations.Load(),
	}
	s.Kernel, s.KernelCounted = f.kernelStats()
	return s
}

// kernelStats reads the device's counters (one netlink request: Stats is for reports and
// scrapes, not for a hot path) relative to those at New.
func (f *FastDP) kernelStats() (LinkStats, bool) {
	sk, ok := f.k.(StatsKernel)
	if !ok {
		return LinkStats{}, false
	}
	f.kmu.Lock()
	defer f.kmu.Unlock()
	cur, err := sk.LinkStats()
	if err != nil {
		// Closed, or the device is gone: the last figures stand.
		f.log.Debug("cannot read the device's counters", logx.KeyErr, err)
		return f.klast, true
	}
	if cur.RxFrames < f.kbase.RxFrames || cur.TxFrames < f.kbase.TxFrames {
		// The device was recreated under us: its counters start again from zero.
		f.kbase = LinkStats{}
	}
	f.klast = cur.sub(f.kbase)
	return f.klast, true
}

func (f *FastDP) statusLocked(p *peer) PeerStatus {
	s := PeerStatus{Peer: p.Name.String(), ConnID: p.ConnID, Addr: p.Addr.String(), Active: p.active}
	if p.h == nil {
		s.State, s.Reason, s.Detail = StateOff, p.off, p.detail
		return s
	}
	s.State, s.Reason, s.Detail = p.h.state, p.h.reason, p.h.detail
	s.Holdoff, s.Since, s.Transitions = p.h.holdoff, p.h.since, p.h.transitions
	return s
}
