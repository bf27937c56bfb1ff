package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"

	"github.com/weavemesh/weave/api"
	"github.com/weavemesh/weave/fastdp"
	"github.com/weavemesh/weave/fastdp/guard"
	"github.com/weavemesh/weave/internal/logx"
	"github.com/weavemesh/weave/l2switch"
	"github.com/weavemesh/weave/mesh"
	"github.com/weavemesh/weave/overlay"
	"github.com/weavemesh/weave/sleeve"
	"github.com/weavemesh/weave/tap"
	"github.com/weavemesh/weave/udp"
)

// envSleeveCiphers restricts the ciphers the sleeve offers ("aes-gcm", "secretbox", space or
// comma separated, most preferred first). A debug and benchmark knob, not a stable flag.
const envSleeveCiphers = "WEAVE_SLEEVE_CIPHERS"

// envCPUProfile names a file to write a CPU profile of the whole daemon to, from data-plane
// start to close (for `go tool pprof`; "%p" in it becomes the process ID); a debug knob, kept
// off any network port.
const envCPUProfile = "WEAVE_CPUPROFILE"

// envNoGSO=1 turns GSO passthrough off (super-frames are cut into TCP segments before the
// sleeve carries them), to measure what it gains; a debug and benchmark knob.
const envNoGSO = "WEAVE_NO_GSO"

// dataPlane wires the L2 switch (l2switch: MAC learning) and two overlays: the sleeve (userspace, UDP
// --port, every pair) between the TAP on the bridge and the socket, and fastdp (kernel
// VXLAN on --port+1, a port of the same bridge) for the pairs whose VXLAN heartbeats pass.
// The overlay.Switch tells the L2 switch per neighbour whether the kernel already carried what
// our bridge sent; fastdp flips it (OnChange).
//
// Connections become established for data once the sleeve's heartbeats pass both ways
// (mesh.Config.OverlayConfirms), and only the sleeve calls SetEstablished: every pair
// needs a working sleeve anyway (broadcasts a fastdp neighbour passes on, relayed frames,
// the fallback), and a pair whose sleeve fails but whose VXLAN works is rare enough
// (UDP --port filtered, --port+1 open) not to be worth a second path to "established".
type dataPlane struct {
	d      *Daemon
	dev    tap.Device
	bind   udp.Bind
	sleeve *sleeve.Sleeve
	sw     *overlay.Switch
	fdp    *fastdp.FastDP    // nil: sleeve only, for the reason in noFdp
	noFdp  fastdp.PeerStatus // why every pair is on sleeve when fdp is nil
	guard  Guard             // the VXLAN port's filter; nil only where nftables is missing
	l2     *l2switch.Switch
	prof   *os.File // CPU profile being written, if asked for
}

// OverlayStats are one overlay's counters, for the report and metrics.
type OverlayStats = overlay.Stats

func (d *Daemon) newDataPlane() (*dataPlane, error) {
	openTAP, listenUDP := tap.Open, udp.Listen
	if d.cfg.Env.OpenTAP != nil {
		openTAP = d.cfg.Env.OpenTAP
	}
	if d.cfg.Env.ListenUDP != nil {
		listenUDP = d.cfg.Env.ListenUDP
	}
	dev, err := openTAP(tap.Config{Name: d.cfg.TAP, Offload: true, Persist: true,
		Logger: d.log})
	if err != nil {
		return nil, fmt.Errorf("open tap %s: %w", d.cfg.TAP, err)
	}
	bind, err := listenUDP(udp.Config{Addr: netip.AddrPortFrom(netip.IPv6Unspecified(), uint16(d.cfg.Port)),
		Logger: d.log})
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("listen on udp port %d: %w", d.cfg.Port, err)
	}
	var ciphers []string
	if v := os.Getenv(envSleeveCiphers); v != "" {
		ciphers = strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' })
	}
	noGSO := os.Getenv(envNoGSO) == "1"
	s, err := sleeve.New(sleeve.Config{Name: d.name, Bind: bind, Ciphers: ciphers, DisableGSO: noGSO,
		Logger: d.log.With(logx.KeyComponent, "sleeve")})
	if err != nil {
		bind.Close()
		dev.Close()
		return nil, err
	}
	dp := &dataPlane{d: d, dev: dev, bind: bind, sleeve: s, sw: overlay.NewSwitch(s)}
	if err := dp.newFastDP(); err != nil {
		s.Close()
		dev.Close()
		return nil, err
	}
	rcfg := l2switch.Config{Name: d.name, TAP: dev, Forwarder: dp.sw, NoGSO: noGSO, Logger: d.log.With(logx.KeyComponent, "l2switch")}
	if dp.fdp != nil {
		rcfg.Learner = dp.fdp
	}
	r, err := l2switch.New(rcfg)
	if err != nil {
		if dp.fdp != nil {
			dp.fdp.Close()
		}
		s.Close()
		dev.Close()
		return nil, err
	}
	dp.l2 = r
	if path := os.Getenv(envCPUProfile); path != "" {
		path = strings.ReplaceAll(path, "%p", strconv.Itoa(os.Getpid())) // one file per router of a lab
		if f, err := os.Create(path); err != nil {
			d.log.Warn("cannot write the CPU profile", logx.KeyPath, path, logx.KeyErr, err)
		} else if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			d.log.Warn("cannot start the CPU profile", logx.KeyPath, path, logx.KeyErr, err)
		} else {
			dp.prof = f
		}
	}
	return dp, nil
}

// fastdpPolicy is the one place that decides whether this mesh may have a kernel path at
// all; nil means yes, else the status every pair shows. The kernel path carries frames in
// clear and authenticates nothing but the sender's underlay address (the guard), so with a
// password a VXLAN device would be a plaintext way into an encrypted network: there is
// none, unless trusted subnets name peers the user lets go without encryption (only those
// pairs then use it; every other pair stays off it with ReasonEncryption, and the guard
// admits only the trusted pairs' addresses). Kernel encryption (IPsec ESP between the
// underlay addresses) would change the answer here: a device whose VNI only ESP-protected
// datagrams reach.
func fastdpPolicy(cfg Config) *fastdp.PeerStatus {
	switch {
	case cfg.NoFastDP:
		st := fastdp.Unavailable(fastdp.ReasonDisabled, nil)
		return &st
	case len(cfg.Password) > 0 && len(cfg.TrustedSubnets) == 0:
		st := fastdp.Unavailable(fastdp.ReasonEncryption, nil)
		return &st
	}
	return nil
}

// newFastDP creates the kernel path when fastdpPolicy allows it; a kernel without VXLAN or
// without nftables leaves the daemon on sleeve only, with the reason in status. The TAP is a
// port of the bridge by now: it is isolated from the VXLAN port.
//
// The guard comes first, whatever the policy: it replaces any filter an earlier run left
// (stale allowances die with it) and drops every datagram on the VXLAN port until fastdp
// admits a peer, so a device from an earlier run, or the new one, is never open to all.
func (dp *dataPlane) newFastDP() error {
	d := dp.d
	openGuard := d.cfg.Env.Guard
	if openGuard == nil {
		openGuard = func(port int) (Guard, error) {
			return guard.Open(guard.Config{Port: port, Logger: d.log.With(logx.KeyComponent, "fastdp")})
		}
	}
	g, gerr := openGuard(d.cfg.Port + 1)
	if gerr == nil {
		dp.guard = g
	} else {
		d.log.Warn("cannot install the nftables guard of the VXLAN port", logx.KeyPort, d.cfg.Port+1, logx.KeyErr, gerr)
	}
	if st := fastdpPolicy(d.cfg); st != nil {
		dp.noFdp = *st
		d.log.Info("no kernel path for this mesh: every connection uses the sleeve", logx.KeyReason, st.Reason)
		return dp.removeKernelPaths()
	}
	if gerr != nil {
		d.log.Warn("no guard for the VXLAN port: every connection uses the sleeve")
		dp.noFdp = fastdp.Unavailable(fastdp.ReasonNoKernel, fmt.Errorf("no nftables filter for the VXLAN port: %w", gerr))
		return dp.removeKernelPaths()
	}
	k, err := dp.ovsKernel() // nil unless --datapath=ovs: then the Linux VXLAN device
	if err != nil {
		return fmt.Errorf("fastdp: %w", err)
	}
	if k == nil {
		k = d.cfg.Env.FastDPKernel // nil unless a test runs the daemon over fakes
	}
	fdp, err := fastdp.New(fastdp.Config{
		Name: d.name, Bridge: d.cfg.Bridge, Port: d.cfg.Port + 1, Kernel: k,
		// The VNI keeps meshes that share a host or an underlay apart; it travels in clear,
		// so it comes from the (public) allocation range, never the password.
		VNI:     fastdp.VNIFor(d.cfg.IPAllocRange.String()),
		MTU:     d.mtu, // as the sleeve's: a pair changing overlay keeps its MTU
		Isolate: []string{d.cfg.TAP},
		Timing:  d.cfg.Env.FastDPTiming,
		// Only the peers fastdp heartbeats with get through to the VXLAN port (OVS's too:
		// its vport listens on the same UDP port of this namespace).
		Filter: dp.guard,
		Logger: d.log.With(logx.KeyComponent, "fastdp"),
		// Called after the kernel is programmed when a pair goes to fastdp, and before its
		// entries go when it leaves: frames may be lost at a flip, never duplicated.
		OnChange: dp.fastdpChanged,
	})
	if errors.Is(err, fastdp.ErrNoKernelSupport) {
		d.log.Warn("no kernel VXLAN: every connection uses the sleeve", logx.KeyErr, err)
		dp.noFdp = fastdp.Unavailable(fastdp.ReasonNoKernel, err)
		return nil
	}
	if err != nil {
		closeKernel(k)
		return fmt.Errorf("fastdp: %w", err)
	}
	dp.fdp = fdp
	return nil
}

// removeKernelPaths takes away the VXLAN device (or OVS setup) an earlier run left when
// this run has no kernel path: it would keep carrying frames to and from the old peers
// (its entries survive a stop). Without the guard in front, a device that cannot be
// removed fails the start: it would accept anyone's datagrams.
func (dp *dataPlane) removeKernelPaths() error {
	d := dp.d
	var err error
	if d.cfg.Env.RemoveKernelPaths != nil {
		err = d.cfg.Env.RemoveKernelPaths()
	} else if err = fastdp.Cleanup("", fastdp.DefaultDevice(d.cfg.Port+1)); err == nil {
		err = dp.removeOVS()
	}
	if err == nil {
		return nil
	}
	if dp.guard != nil {
		d.log.Warn("cannot remove the kernel path of an earlier run; the guard drops its datagrams", logx.KeyErr, err)
		return nil
	}
	return fmt.Errorf("fastdp: remove the unfiltered kernel path of an earlier run: %w", err)
}

func (dp *dataPlane) fastdpChanged(st fastdp.PeerStatus) {
	peer, err := mesh.ParsePeerName(st.Peer)
	if err != nil {
		return
	}
	maxFrame := 0
	if st.Active {
		maxFrame = dp.fdp.MTU() + 14
	}
	dp.sw.SetKernel(peer, maxFrame)
}

// configureMesh lets the data plane hook into connection setup before the mesh starts.
func (dp *dataPlane) configureMesh(c *mesh.Config) {
	c.Overlay = overlayHooks{dp}
	c.OverlayConfirms = true
	if c.Features == nil {
		c.Features = map[string]string{}
	}
	for k, v := range dp.sleeve.Features() {
		c.Features[k] = v
	}
	c.Features["overlays"] = "sleeve"
	if dp.fdp != nil {
		for k, v := range dp.fdp.Features() {
			c.Features[k] = v
		}
		c.Features["overlays"] = "fastdp sleeve"
	}
}

// overlayHooks fans the mesh's connection events out to both overlays, and each overlay
// control message to the overlay it is for.
type overlayHooks struct{ dp *dataPlane }

func (h overlayHooks) ConnectionUp(ci mesh.ConnInfo) {
	h.dp.sleeve.ConnectionUp(ci)
	if f := h.dp.fdp; f != nil {
		f.ConnectionUp(ci)
		h.syncKernel(ci.Peer)
	}
}

func (h overlayHooks) ConnectionDown(peer mesh.PeerName, connID uint64) {
	h.dp.sleeve.ConnectionDown(peer, connID)
	if f := h.dp.fdp; f != nil {
		f.ConnectionDown(peer, connID)
		h.syncKernel(peer)
	}
}

// syncKernel turns the switch off for peer when fastdp dropped the pair without an
// OnChange (a connection gone or replaced); turning it on is left to OnChange alone.
func (h overlayHooks) syncKernel(peer mesh.PeerName) {
	if !h.dp.fdp.Active(peer) {
		h.dp.sw.SetKernel(peer, 0)
	}
}

func (h overlayHooks) OverlayControl(peer mesh.PeerName, connID uint64, msg []byte) {
	if f := h.dp.fdp; f != nil && fastdp.IsControl(msg) {
		f.OverlayControl(peer, connID, msg)
		return
	}
	h.dp.sleeve.OverlayControl(peer, connID, msg)
}

// start runs the data plane on top of the started mesh.
func (dp *dataPlane) start(m *mesh.Router) error {
	m.OnRoutesChanged(dp.l2.RoutesChanged)
	m.OnPeerGC(dp.l2.PeerGone)
	dp.l2.Start(m)
	dp.sleeve.Start(m, dp.l2)
	if dp.fdp != nil {
		dp.fdp.Start(m)
	}
	return nil
}

// close stops the data plane; idempotent. The TAP stays (persistent) for the next start,
// and so does the VXLAN device with its entries (reset removes both).
func (dp *dataPlane) close() error {
	dp.logStats()
	err := dp.l2.Close() // closes the TAP
	if e := dp.sleeve.Close(); err == nil {
		err = e
	}
	if dp.fdp != nil {
		if e := dp.fdp.Close(); err == nil {
			err = e
		}
	}
	if dp.guard != nil {
		// The table stays with the device (see guard); only our socket goes.
		if e := dp.guard.Close(); err == nil {
			err = e
		}
	}
	if dp.prof != nil {
		pprof.StopCPUProfile()
		dp.prof.Close()
		dp.prof = nil
	}
	return err
}

// connOverlay tells the report which overlay carries data to peer, its MTU, and why it is
// not fastdp (empty when it is).
func (dp *dataPlane) connOverlay(peer mesh.PeerName) (overlayName string, mtu int, why string, ok bool) {
	info, ok := dp.sleeve.PeerInfo(peer)
	if !ok || !info.Established {
		return "", 0, "", false
	}
	if dp.fdp == nil {
		return "sleeve", info.MTU, dp.noFdp.Info(), true
	}
	st, known := dp.fdp.Status(peer)
	if known && st.Active && dp.sw.KernelCarries(peer) {
		return "fastdp", dp.fdp.MTU(), "", true
	}
	if !known {
		return "sleeve", info.MTU, "sleeve: fastdp does not know the connection", true
	}
	return "sleeve", info.MTU, st.Info(), true
}

// stats returns the counters per overlay. The kernel's frames never pass through the
// daemon, so fastdp's entry comes from the VXLAN device's own counters (heartbeats among
// them) plus the input fastdp refused and its kernel programming errors (fastdp.Stats.Overlay).
func (dp *dataPlane) stats() map[string]OverlayStats {
	m := map[string]OverlayStats{"sleeve": dp.sleeve.Stats().Stats}
	if dp.fdp != nil {
		m["fastdp"] = dp.fdp.Stats().Overlay()
	}
	return m
}

// annotateConnections fills in which overlay carries each established connection and its
// MTU (the report's "overlay" and "mtu"); report() calls it with the mesh's connections.
func (dp *dataPlane) annotateConnections(conns []api.Connection) {
	for i := range conns {
		peer, err := mesh.ParsePeerName(conns[i].Peer)
		if err != nil {
			continue
		}
		if ov, mtu, why, ok := dp.connOverlay(peer); ok {
			conns[i].Overlay, conns[i].MTU = ov, mtu
			if why != "" {
				conns[i].Info = strings.TrimPrefix(conns[i].Info+", "+why, ", ")
			}
		} else if info, ok := dp.sleeve.PeerInfo(peer); ok && info.Waiting != "" {
			// Why a connection stays pending: the sleeve's data path is not up yet.
			conns[i].Info = strings.TrimPrefix(conns[i].Info+", sleeve: "+info.Waiting, ", ")
		}
	}
}

// logStats logs what the data plane carried and how well the offloads batched it, a line
// per component.
func (dp *dataPlane) logStats() {
	line := func(component string, stats any) {
		dp.d.log.Info("data plane totals", logx.KeyComponent, component, logx.KeyStats, stats)
	}
	line("sleeve", dp.sleeve.Stats())
	line("l2switch", dp.l2.Stats())
	if dp.fdp != nil {
		line("fastdp", dp.fdp.Stats())
	}
	if sr, ok := dp.dev.(tap.StatsReporter); ok {
		line("tap", sr.Stats())
	}
	if sr, ok := dp.bind.(udp.StatsReporter); ok {
		line("udp", sr.Stats())
	}
}

// sleeveRefused counts datagrams the sleeve refused, by reason, for a
// weave_sleeve_refused_total{reason} metric.
func (dp *dataPlane) sleeveRefused() map[string]uint64 {
	st := dp.sleeve.Stats()
	return map[string]uint64{
		"replayed": st.Replayed, "auth_failed": st.AuthFailed,
		"unknown_sender": st.UnknownSender, "malformed": st.Malformed,
		"gso_incomplete": st.GSOIncomplete,
	}
}

// fastdpRefused is how many datagrams the guard dropped on the VXLAN port (senders that
// are not fastdp peers), for weave_fastdp_refused_total; ok is false without a guard.
func (dp *dataPlane) fastdpRefused() (n uint64, ok bool) {
	if dp.guard == nil {
		return 0, false
	}
	n, err := dp.guard.Refused()
	if err != nil {
		dp.d.log.Debug("cannot read the fastdp guard's counter", logx.KeyErr, err)
		return 0, false
	}
	return n, true
}

// l2switchStats are the forwarding core's counters (frames relayed, without route, too big,
// ICMP sent, fragmented, MAC moves), for metrics.
func (dp *dataPlane) l2switchStats() l2switch.Stats { return dp.l2.Stats() }
