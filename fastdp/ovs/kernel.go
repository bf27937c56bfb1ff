package ovs

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"

	"github.com/weavemesh/weave/fastdp"
	"github.com/weavemesh/weave/internal/logx"
)

// Names of the two veth pairs that carry fastdp's heartbeats in and out of our bridge: the
// "o" end is a port of the OVS bridge, the other end holds a packet socket. Pair 0 is in the
// untagged VLAN of active peers, pair 1 in QuarantineVLAN, so a heartbeat reaches every peer
// whatever its state, as the Linux backend's per-peer heartbeat FDB entry does.
const (
	HeartbeatOVS0  = "vethwe-hb0o"
	HeartbeatHost0 = "vethwe-hb0"
	HeartbeatOVS1  = "vethwe-hb1o"
	HeartbeatHost1 = "vethwe-hb1"
)

// HeartbeatEtherType is the EtherType of fastdp's heartbeat frames (IEEE 802 local
// experimental 1); the packet sockets see nothing else.
const HeartbeatEtherType = 0x88b5

// KernelLinks is the OS boundary of Kernel: Links, plus the heartbeat ports and the Linux
// bridge. NetlinkLinks is the real one, FakeLinks the one for tests without root.
type KernelLinks interface {
	Links
	// Pair creates or completes the veth pair ovsEnd <-> hostEnd (on no bridge), both ends
	// with mtu, up.
	Pair(ovsEnd, hostEnd string, mtu int) error
	// Isolate makes dev an isolated port of the Linux bridge it belongs to.
	Isolate(dev string) error
	// FlushLearned forgets what the Linux bridge learned dynamically.
	FlushLearned(bridge string) error
	// HardwareAddr returns dev's MAC.
	HardwareAddr(dev string) ([6]byte, error)
	// OpenPacket opens a socket on dev that sends raw frames and receives the frames of
	// HeartbeatEtherType; closing it unblocks a Read.
	OpenPacket(dev string) (io.ReadWriteCloser, error)
	// Close releases the links' own resources.
	Close() error
}

// KernelConfig configures NewKernel.
type KernelConfig struct {
	// Backend is the OVS bridge to program (New, not yet EnsureBridge'd). The Kernel owns
	// it from then on: its Close closes the Backend.
	Backend *Backend
	// Links is the OS side; the Kernel owns it too.
	Links KernelLinks
	// Bridge is the weave Linux bridge, joined to our OVS bridge by AttachLinuxBridge.
	Bridge string
	// MTU is the overlay MTU (the largest IP packet of a container): the uplink's and the
	// heartbeat ports', and what fastdp proves with full-size heartbeats.
	MTU int
	// Isolate names ports of the Linux bridge that must never exchange frames with OVS: the
	// router's TAP (see fastdp.Config.Isolate).
	Isolate []string
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
}

// Kernel is the Open vSwitch implementation of fastdp.Kernel: give it to fastdp.New as
// Config.Kernel and fastdp's heartbeats, hysteresis, reasons and switch-over run unchanged
// over OVS.
//
// Per remote address there is one VXLAN tunnel port (named after the address), created
// quarantined when the first heartbeat remote or flood remote needs it, made active by
// SetFloodRemote and removed when neither needs it any more. Unicast MAC entries are left
// to NORMAL's own learning (SetMAC and DelMAC do nothing); moving a port in or out of the
// quarantine VLAN flushes what OVS learned on it, and FlushLearned flushes the Linux bridge.
type Kernel struct {
	b      *Backend
	links  KernelLinks
	log    *slog.Logger
	bridge string
	mtu    int
	mac    [6]byte
	socks  [2]io.ReadWriteCloser

	mu    sync.Mutex
	beats map[netip.Addr]bool
	flood map[netip.Addr]bool
	// retired sums the last counters of tunnel ports removed since NewKernel, so that
	// LinkStats never goes back when a peer leaves.
	retired fastdp.LinkStats

	frames    chan []byte
	done      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
}

var _ fastdp.StatsKernel = (*Kernel)(nil)

// NewKernel creates (or adopts) our OVS bridge, joins it to the Linux bridge, adds the
// heartbeat ports and opens their sockets. Tunnel ports left by an earlier run are removed:
// peers come back through fastdp as their connections do. On error everything opened is
// closed, the Backend included; what was configured stays for Cleanup.
func NewKernel(cfg KernelConfig) (_ *Kernel, err error) {
	if cfg.Backend == nil || cfg.Links == nil {
		return nil, errors.New("ovs: kernel needs a backend and links")
	}
	if cfg.MTU < 576 || cfg.MTU > 65535-fastdp.OverheadIPv6 {
		cfg.Backend.Close()
		cfg.Links.Close()
		return nil, fmt.Errorf("ovs: kernel: mtu %d out of range", cfg.MTU)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	k := &Kernel{b: cfg.Backend, links: cfg.Links, log: cfg.Logger, bridge: cfg.Bridge, mtu: cfg.MTU,
		beats: map[netip.Addr]bool{}, flood: map[netip.Addr]bool{},
		frames: make(chan []byte, 64), done: make(chan struct{})}
	defer func() {
		if err != nil {
			k.Close()
		}
	}()
	b := cfg.Backend
	if err := b.EnsureBridge(); err != nil {
		return nil, err
	}
	if err := b.RemoveAllPeers(); err != nil {
		return nil, err
	}
	if err := b.AttachLinuxBridge(cfg.Bridge, cfg.MTU); err != nil {
		return nil, err
	}
	q := QuarantineVLAN
	for i, p := range []struct {
		ovs, host string
		tag       *int
	}{{HeartbeatOVS0, HeartbeatHost0, nil}, {HeartbeatOVS1, HeartbeatHost1, &q}} {
		if err := cfg.Links.Pair(p.ovs, p.host, cfg.MTU); err != nil {
			return nil, err
		}
		if err := b.addLocalPort(p.ovs, true, p.tag); err != nil {
			return nil, err
		}
		if k.socks[i], err = cfg.Links.OpenPacket(p.host); err != nil {
			return nil, err
		}
	}
	for _, dev := range cfg.Isolate {
		if err := cfg.Links.Isolate(dev); err != nil {
			return nil, err
		}
	}
	if k.mac, err = cfg.Links.HardwareAddr(HeartbeatHost0); err != nil {
		return nil, err
	}
	for _, s := range k.socks {
		k.wg.Add(1)
		go k.read(s)
	}
	k.log.Info("OVS kernel path ready", logx.KeyDevice, b.Bridge(), logx.KeyMode, b.cfg.DatapathType, logx.KeyMTU, cfg.MTU)
	return k, nil
}

// read owns one heartbeat socket's receive side until Close.
func (k *Kernel) read(s io.Reader) {
	defer k.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, err := s.Read(buf)
		if err != nil {
			select {
			case <-k.done:
				return
			default:
			}
			k.log.Warn("cannot read the OVS heartbeat socket; this half of the heartbeats stops", logx.KeyErr, err)
			return
		}
		select {
		case k.frames <- append([]byte(nil), buf[:n]...):
		case <-k.done:
			return
		default: // fastdp is behind: drop, as a full socket buffer would
		}
	}
}

// PeerPort is the tunnel port name used for the peer at addr.
func PeerPort(addr netip.Addr) string { return TunnelName(addr.Unmap().String()) }

func (k *Kernel) MTU() int              { return k.mtu }
func (k *Kernel) HardwareAddr() [6]byte { return k.mac }

// SetHeartbeatRemote makes sure addr has a tunnel port (new ones start quarantined), or
// removes it when addr is no flood remote either.
func (k *Kernel) SetHeartbeatRemote(addr netip.Addr, on bool) error {
	addr = addr.Unmap()
	k.mu.Lock()
	defer k.mu.Unlock()
	if on {
		return k.ensurePortLocked(addr, k.beats)
	}
	delete(k.beats, addr)
	if k.flood[addr] {
		return nil
	}
	return k.removeLocked(addr)
}

// ensurePortLocked adds addr's tunnel port, quarantined, unless it has one, and records
// addr in role (k.beats or k.flood): the port goes when its last role does. Must hold k.mu.
func (k *Kernel) ensurePortLocked(addr netip.Addr, role map[netip.Addr]bool) error {
	if !k.beats[addr] && !k.flood[addr] {
		if err := k.b.addPeer(addr.String(), addr, false); err != nil {
			return err
		}
	}
	role[addr] = true
	return nil
}

// SetFloodRemote takes addr's tunnel port out of quarantine (on) or puts it back.
func (k *Kernel) SetFloodRemote(addr netip.Addr, on bool) error {
	addr = addr.Unmap()
	k.mu.Lock()
	defer k.mu.Unlock()
	if on {
		if err := k.ensurePortLocked(addr, k.flood); err != nil {
			return err
		}
		return k.b.SetPeerActive(addr.String(), true)
	}
	if !k.flood[addr] {
		return nil
	}
	delete(k.flood, addr)
	if !k.beats[addr] {
		return k.removeLocked(addr)
	}
	return k.b.SetPeerActive(addr.String(), false)
}

// removeLocked removes addr's tunnel port, keeping its last counters in retired.
func (k *Kernel) removeLocked(addr netip.Addr) error {
	if st, ok := k.b.TunnelStats()[addr.String()]; ok {
		k.retired = addStats(k.retired, linkStats(st))
	}
	return k.b.RemovePeer(addr.String())
}

// LinkStats sums the counters of our tunnel interfaces (those removed included): every
// frame OVS encapsulated for a peer or decapsulated from one, heartbeats and containers'
// data alike (fastdp.StatsKernel). They lag by ovs-vswitchd's statistics interval.
func (k *Kernel) LinkStats() (fastdp.LinkStats, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	sum := k.retired
	for _, st := range k.b.TunnelStats() {
		sum = addStats(sum, linkStats(st))
	}
	return sum, nil
}

// linkStats reads an Interface statistics column; negative or missing values count 0.
func linkStats(m map[string]int) fastdp.LinkStats {
	v := func(keys ...string) uint64 {
		var n uint64
		for _, key := range keys {
			if x := m[key]; x > 0 {
				n += uint64(x)
			}
		}
		return n
	}
	return fastdp.LinkStats{
		RxFrames: v("rx_packets"), RxBytes: v("rx_bytes"), RxDropped: v("rx_dropped", "rx_errors"),
		TxFrames: v("tx_packets"), TxBytes: v("tx_bytes"), TxDropped: v("tx_dropped", "tx_errors"),
	}
}

func addStats(a, b fastdp.LinkStats) fastdp.LinkStats {
	return fastdp.LinkStats{
		RxFrames: a.RxFrames + b.RxFrames, RxBytes: a.RxBytes + b.RxBytes, RxDropped: a.RxDropped + b.RxDropped,
		TxFrames: a.TxFrames + b.TxFrames, TxBytes: a.TxBytes + b.TxBytes, TxDropped: a.TxDropped + b.TxDropped,
	}
}

// SetMAC does nothing: NORMAL learns where each MAC is, and a quarantined port neither
// delivers nor receives, so no drop entry is needed either.
func (k *Kernel) SetMAC(mac [6]byte, addr netip.Addr) error { return nil }

// DelMAC does nothing; see SetMAC.
func (k *Kernel) DelMAC(mac [6]byte, addr netip.Addr) error { return nil }

// FlushLearned forgets the Linux bridge's learned entries (OVS forgets those of a port
// whose VLAN changes by itself).
func (k *Kernel) FlushLearned() error { return k.links.FlushLearned(k.bridge) }

// WriteFrame sends a frame into both heartbeat ports, so it reaches active and quarantined
// peers alike; each peer's port is in exactly one of the two VLANs, so each gets one copy.
func (k *Kernel) WriteFrame(frame []byte) error {
	var errs []error
	for i, s := range k.socks {
		if _, err := s.Write(frame); err != nil {
			errs = append(errs, fmt.Errorf("ovs: heartbeat port %d: %w", i, err))
		}
	}
	return errors.Join(errs...)
}

// ReadFrame returns the next heartbeat frame from either port.
func (k *Kernel) ReadFrame(buf []byte) (int, error) {
	select {
	case f := <-k.frames:
		return copy(buf, f), nil
	case <-k.done:
		return 0, errors.New("ovs: kernel closed")
	}
}

// Close stops I/O and disconnects from ovsdb-server; the bridge, its ports and the veths
// stay (Cleanup removes them). Idempotent.
func (k *Kernel) Close() error {
	k.closeOnce.Do(func() {
		close(k.done)
		for _, s := range k.socks {
			if s != nil {
				s.Close()
			}
		}
		k.wg.Wait()
		k.b.Close()
		k.links.Close()
	})
	return nil
}
