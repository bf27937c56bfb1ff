package mesh

import (
	"log/slog"
	"net/netip"
	"time"
)

// Defaults, mostly Weave's (weave-notes §2.9). The topology check and coalescing delay are
// new: topology repair is by digest, not by full-state flooding, so it can run often.
const (
	DefaultPort              = 6783
	DefaultConnLimit         = 100
	DefaultHeartbeatInterval = 30 * time.Second
	DefaultGossipInterval    = 30 * time.Second
	DefaultTopologyInterval  = 5 * time.Second
	DefaultTopologyDelay     = 250 * time.Millisecond
	DefaultRouteDelay        = 100 * time.Millisecond
	DefaultDialTimeout       = 10 * time.Second
	// Logs of refused inbound connections: at most refuseLogBurst lines per reason per
	// refuseLogInterval (see Router.logRefused).
	refuseLogInterval = 10 * time.Second
	refuseLogBurst    = 5
	// Connection retry backoff: initial, ×1.5, capped; a connection that lived longer than
	// retryReset is retried at once when it dies.
	retryInitial = 2 * time.Second
	retryMax     = 6 * time.Minute
	retryReset   = time.Minute
	sendQueueLen = 4096
)

// Config configures a Router. Zero values take the defaults above.
type Config struct {
	// Name is this peer's identity (see LoadOrCreateName). Required.
	Name PeerName
	// NickName is shown to users (the hostname, usually).
	NickName string
	// UID is this incarnation's id; zero: random.
	UID uint64
	// Port is the TCP port we listen on and dial when a target has no port.
	Port int
	// ListenAddr overrides the listen address (default ":Port"); "-" listens on nothing.
	ListenAddr string
	// Password enables encryption of every connection; all peers must share it.
	Password []byte
	// StateDir holds the persisted targets file; empty: nothing is persisted.
	StateDir string
	// ConnLimit caps the number of connections (Weave's --conn-limit).
	ConnLimit int
	// NoDiscovery stops dialling peers learned from gossip.
	NoDiscovery bool
	// TrustedSubnets: peers whose address is inside one are trusted, and the data plane
	// with them may go unencrypted (the control plane is always encrypted with a password).
	TrustedSubnets []netip.Prefix
	// Peers are the initial targets, host[:port].
	Peers []string
	// Logger receives structured logs; nil: discard.
	Logger *slog.Logger

	// Transport listens and dials; nil: TCP. Tests use a MemNetwork.
	Transport Transport
	// Features are extra handshake key/values (e.g. the overlays this peer offers).
	Features map[string]string

	// Overlay, if set, learns of connections and may confirm them (see OverlayHook).
	Overlay OverlayHook
	// OverlayConfirms: connections stay "pending" until the overlay calls SetEstablished;
	// otherwise a connection is established as soon as TCP and the handshake are up.
	OverlayConfirms bool

	// NoMemberlist disables the memberlist failure detector riding the mesh.
	NoMemberlist bool
	// MemberlistTiming overrides memberlist's timing (nil: WAN-ish defaults, see memberlist.go).
	MemberlistTiming *MemberlistTiming

	HandshakeTimeout  time.Duration
	DialTimeout       time.Duration
	HeartbeatInterval time.Duration // TCP heartbeat; the read deadline is twice this
	GossipInterval    time.Duration // full-state gossip of each channel
	TopologyInterval  time.Duration // topology hash check with a few neighbours
	TopologyDelay     time.Duration // coalescing of topology changes before they are sent
	RouteDelay        time.Duration // coalescing of route recalculation
}

func (c *Config) setDefaults() {
	if c.Port == 0 {
		c.Port = DefaultPort
	}
	if c.ConnLimit == 0 {
		c.ConnLimit = DefaultConnLimit
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Transport == nil {
		c.Transport = TCPTransport{}
	}
	if c.UID == 0 {
		c.UID = newUID()
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.HandshakeTimeout, defaultHandshakeTimeout)
	def(&c.DialTimeout, DefaultDialTimeout)
	def(&c.HeartbeatInterval, DefaultHeartbeatInterval)
	def(&c.GossipInterval, DefaultGossipInterval)
	def(&c.TopologyInterval, DefaultTopologyInterval)
	def(&c.TopologyDelay, DefaultTopologyDelay)
	def(&c.RouteDelay, DefaultRouteDelay)
}
