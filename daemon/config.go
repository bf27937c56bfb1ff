package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/weavemesh/weave/api"
	"github.com/weavemesh/weave/fastdp"
	"github.com/weavemesh/weave/internal/netdev"
	"github.com/weavemesh/weave/ipam"
	"github.com/weavemesh/weave/mesh"
	"github.com/weavemesh/weave/tap"
	"github.com/weavemesh/weave/udp"
)

// Config is everything the daemon needs; cmd/weaver fills it from flags and environment.
type Config struct {
	// Name overrides the persisted peer name (MAC form); empty: load or derive it.
	Name string
	// NickName is shown to users; empty: the hostname.
	NickName string
	// Port is the TCP control port and UDP sleeve port; Port+1 is the fastdp VXLAN port.
	Port int
	// Password enables encryption of every control and data path.
	Password []byte
	// Peers are the initial targets, host[:port].
	Peers []string
	// ConnLimit caps the number of connections (0: unlimited).
	ConnLimit int
	// NoDiscovery stops dialling peers learned from gossip.
	NoDiscovery bool
	// TrustedSubnets are underlay networks whose peers skip data-plane encryption.
	TrustedSubnets []netip.Prefix
	// MTU of the bridge and containers; 0: computed from the underlay.
	MTU int
	// NoFastDP keeps every connection on the sleeve overlay.
	NoFastDP bool
	// Datapath is the kernel path's backend: "linux" (or empty: a VXLAN device on the
	// bridge) or "ovs" (an Open vSwitch bridge through OVSSocket; see dataplane_ovs.go).
	Datapath string
	// OVSSocket is ovsdb-server's socket for --datapath=ovs ("unix:" prefix optional).
	OVSSocket string
	// OVSDatapathType is the OVS bridge's datapath_type: "" (system) or "netdev".
	OVSDatapathType string
	// IPAllocRange is the IPAM universe.
	IPAllocRange netip.Prefix
	// IPAllocInit is consensus[=N], seed=NAME,... or observer.
	IPAllocInit string
	// IPAllocDefaultSubnet is where addresses come from when none is asked for (default:
	// the whole range).
	IPAllocDefaultSubnet netip.Prefix
	// IPAllocReclaimAfter, when positive, takes over the space of a peer the cluster has
	// agreed is dead for that long.
	IPAllocReclaimAfter time.Duration
	// StateDir holds identity, IPAM database and targets.
	StateDir string
	// Socket is the control API's unix socket.
	Socket string
	// MetricsAddr is where Prometheus metrics are served ("": off).
	MetricsAddr string
	// Bridge and TAP are the names of the host devices.
	Bridge, TAP string

	Logger *slog.Logger
	// Links is the host plumbing; nil: netlink in the current namespace.
	Links netdev.Links
	// Env is the rest of the OS boundary; its zero value is the real one.
	Env Env
	// Version is reported by the API.
	Version string
	// ShutdownTimeout bounds Close.
	ShutdownTimeout time.Duration
}

// Env replaces the daemon's devices and sockets, so that tests/e2e can run several whole
// daemons in one process, unprivileged, over the in-memory fakes (taptest, udptest,
// fastdp.FakeNet, mesh.MemNetwork). Each nil field takes the real implementation; the
// control API's unix socket and the state dir stay real (they need no privilege).
type Env struct {
	// OpenTAP opens the router's TAP; nil: tap.Open.
	OpenTAP func(tap.Config) (tap.Device, error)
	// ListenUDP opens the sleeve's socket; nil: udp.Listen.
	ListenUDP func(udp.Config) (udp.Bind, error)
	// FastDPKernel replaces the kernel path (the VXLAN device, or OVS with --datapath=ovs).
	FastDPKernel fastdp.Kernel
	// FastDPTiming overrides fastdp's heartbeat and hysteresis timing (zero: defaults), so
	// that a test sees a pair flip in well under a second.
	FastDPTiming fastdp.Timing
	// Guard installs the underlay filter of the VXLAN port; nil: the nftables guard
	// (fastdp/guard) in this network namespace.
	Guard func(port int) (Guard, error)
	// RemoveKernelPaths removes the VXLAN device or OVS setup an earlier run left when this
	// run has no kernel path; nil: the real ones in this network namespace.
	RemoveKernelPaths func() error
	// MeshTransport listens and dials for the mesh; nil: TCP.
	MeshTransport mesh.Transport
	// MeshListenAddr is the mesh's listen address (host:port); empty: ":Port". An
	// in-memory transport needs the host, since it is what peers dial.
	MeshListenAddr string
}

// Guard is the filter in front of the kernel path's VXLAN port: fastdp admits the peers it
// heartbeats with, everything else is dropped and counted.
type Guard interface {
	fastdp.Filter
	// Refused counts the datagrams dropped (weave_fastdp_refused_total).
	Refused() (uint64, error)
	Close() error
}

// DefaultConfig returns the CONTRACT defaults.
func DefaultConfig() Config {
	return Config{
		Port:            api.DefaultPort,
		StateDir:        api.DefaultStateDir,
		Socket:          api.DefaultSocket,
		MetricsAddr:     api.DefaultMetricsAddr,
		Bridge:          api.DefaultBridge,
		TAP:             api.DefaultTAP,
		IPAllocRange:    netip.MustParsePrefix(api.DefaultIPRange),
		IPAllocInit:     "consensus",
		ConnLimit:       200,
		Datapath:        DatapathLinux,
		OVSSocket:       DefaultOVSSocket,
		ShutdownTimeout: 10 * time.Second,
		Version:         "dev",
	}
}

func (c *Config) validate() error {
	var errs []error
	if c.Port <= 0 || c.Port > 65534 {
		errs = append(errs, fmt.Errorf("--port %d out of range 1-65534 (port+1 is used for VXLAN)", c.Port))
	}
	if c.StateDir == "" {
		errs = append(errs, errors.New("--state-dir is empty"))
	}
	if c.Socket == "" {
		errs = append(errs, errors.New("--socket is empty"))
	}
	if c.MTU != 0 && (c.MTU < 576 || c.MTU > 65535) {
		errs = append(errs, fmt.Errorf("--mtu %d out of range 576-65535", c.MTU))
	}
	if c.ConnLimit < 0 {
		errs = append(errs, fmt.Errorf("--conn-limit %d is negative", c.ConnLimit))
	}
	if c.Bridge == "" || len(c.Bridge) > 15 || c.TAP == "" || len(c.TAP) > 15 {
		errs = append(errs, fmt.Errorf("bridge %q and tap %q names must be 1-15 characters", c.Bridge, c.TAP))
	}
	if err := mesh.CheckNickName(c.NickName); err != nil {
		errs = append(errs, fmt.Errorf("--nickname: %w", err))
	}
	if c.IPAllocRange.IsValid() {
		// The peer name is not known yet; any valid one checks the rest.
		ic := ipam.Config{Range: c.IPAllocRange, DefaultSubnet: c.IPAllocDefaultSubnet, Init: c.IPAllocInit,
			InitialPeerCount: len(c.Peers) + 1, Name: mesh.PeerName(1)}
		if err := ic.Validate(); err != nil {
			errs = append(errs, err)
		}
	} else if c.IPAllocDefaultSubnet.IsValid() {
		errs = append(errs, errors.New("--ipalloc-default-subnet without an --ipalloc-range"))
	}
	for _, p := range c.TrustedSubnets {
		if !p.IsValid() {
			errs = append(errs, fmt.Errorf("--trusted-subnets: bad subnet %v", p))
		}
	}
	if err := c.validateDatapath(); err != nil {
		errs = append(errs, err)
	}
	if c.Logger == nil {
		errs = append(errs, errors.New("no logger"))
	}
	return errors.Join(errs...)
}
