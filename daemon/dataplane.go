package daemon

import (
	"fmt"
	"net/netip"
	"os"
	"runtime/pprof"
	"strings"

	"github.com/weavemesh/weave/api"
	"github.com/weavemesh/weave/mesh"
	"github.com/weavemesh/weave/overlay"
	"github.com/weavemesh/weave/router"
	"github.com/weavemesh/weave/sleeve"
	"github.com/weavemesh/weave/tap"
	"github.com/weavemesh/weave/udp"
)

// envSleeveCiphers restricts the ciphers the sleeve offers ("aes-gcm", "secretbox", space or
// comma separated, most preferred first). A debug and benchmark knob, not a stable flag.
const envSleeveCiphers = "WEAVE_SLEEVE_CIPHERS"

// envCPUProfile names a file to write a CPU profile of the whole daemon to, from data-plane
// start to close (for `go tool pprof`); a debug knob, kept off any network port.
const envCPUProfile = "WEAVE_CPUPROFILE"

// dataPlane wires the router (MAC learning) and the sleeve overlay between the TAP on the
// bridge and the UDP socket on --port. Connections become established for data only once
// the sleeve's heartbeats pass both ways (mesh.Config.OverlayConfirms).
type dataPlane struct {
	d      *Daemon
	dev    tap.Device
	bind   udp.Bind
	sleeve *sleeve.Sleeve
	router *router.Router
	prof   *os.File // CPU profile being written, if asked for
}

// OverlayStats are one overlay's counters, for the report and metrics.
type OverlayStats = overlay.Stats

func (d *Daemon) newDataPlane() (*dataPlane, error) {
	dev, err := tap.Open(tap.Config{Name: d.cfg.TAP, Offload: true, Persist: true,
		Logger: d.log.With("component", "tap")})
	if err != nil {
		return nil, fmt.Errorf("open tap %s: %w", d.cfg.TAP, err)
	}
	bind, err := udp.Listen(udp.Config{Addr: netip.AddrPortFrom(netip.IPv6Unspecified(), uint16(d.cfg.Port)),
		Logger: d.log.With("component", "udp")})
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("listen on udp port %d: %w", d.cfg.Port, err)
	}
	var ciphers []string
	if v := os.Getenv(envSleeveCiphers); v != "" {
		ciphers = strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' })
	}
	s, err := sleeve.New(sleeve.Config{Name: d.name, Bind: bind, Ciphers: ciphers,
		Logger: d.log.With("component", "sleeve")})
	if err != nil {
		bind.Close()
		dev.Close()
		return nil, err
	}
	r, err := router.New(router.Config{Name: d.name, TAP: dev, Forwarder: s,
		Logger: d.log.With("component", "router")})
	if err != nil {
		s.Close()
		dev.Close()
		return nil, err
	}
	dp := &dataPlane{d: d, dev: dev, bind: bind, sleeve: s, router: r}
	if path := os.Getenv(envCPUProfile); path != "" {
		if f, err := os.Create(path); err != nil {
			d.log.Warn("cannot write the CPU profile", "path", path, "err", err)
		} else if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			d.log.Warn("cannot start the CPU profile", "path", path, "err", err)
		} else {
			dp.prof = f
		}
	}
	return dp, nil
}

// configureMesh lets the data plane hook into connection setup before the mesh starts.
func (dp *dataPlane) configureMesh(c *mesh.Config) {
	c.Overlay = dp.sleeve
	c.OverlayConfirms = true
	if c.Features == nil {
		c.Features = map[string]string{}
	}
	for k, v := range dp.sleeve.Features() {
		c.Features[k] = v
	}
	c.Features["overlays"] = "sleeve"
}

// start runs the data plane on top of the started mesh.
func (dp *dataPlane) start(m *mesh.Router) error {
	m.OnRoutesChanged(dp.router.RoutesChanged)
	m.OnPeerGC(dp.router.PeerGone)
	dp.router.Start(m)
	dp.sleeve.Start(m, dp.router)
	return nil
}

// close stops the data plane; idempotent. The TAP stays (persistent) for the next start.
func (dp *dataPlane) close() error {
	dp.logStats()
	err := dp.router.Close() // closes the TAP
	if e := dp.sleeve.Close(); err == nil {
		err = e
	}
	if dp.prof != nil {
		pprof.StopCPUProfile()
		dp.prof.Close()
		dp.prof = nil
	}
	return err
}

// connOverlay tells the report which overlay carries data to peer, and its MTU.
func (dp *dataPlane) connOverlay(peer mesh.PeerName) (overlayName string, mtu int, ok bool) {
	info, ok := dp.sleeve.PeerInfo(peer)
	if !ok || !info.Established {
		return "", 0, false
	}
	return "sleeve", info.MTU, true
}

// stats returns the counters per overlay.
func (dp *dataPlane) stats() map[string]OverlayStats {
	return map[string]OverlayStats{"sleeve": dp.sleeve.Stats().Stats}
}

// annotateConnections fills in which overlay carries each established connection and its
// MTU (the report's "overlay" and "mtu"); report() calls it with the mesh's connections.
func (dp *dataPlane) annotateConnections(conns []api.Connection) {
	for i := range conns {
		peer, err := mesh.ParsePeerName(conns[i].Peer)
		if err != nil {
			continue
		}
		if ov, mtu, ok := dp.connOverlay(peer); ok {
			conns[i].Overlay, conns[i].MTU = ov, mtu
		}
	}
}

// logStats logs what the data plane carried and how well the offloads batched it.
func (dp *dataPlane) logStats() {
	args := []any{"sleeve", dp.sleeve.Stats(), "router", dp.router.Stats()}
	if sr, ok := dp.dev.(tap.StatsReporter); ok {
		args = append(args, "tap", sr.Stats())
	}
	if sr, ok := dp.bind.(udp.StatsReporter); ok {
		args = append(args, "udp", sr.Stats())
	}
	dp.d.log.Info("data plane totals", args...)
}

// sleeveRefused counts datagrams the sleeve refused, by reason, for a
// weave_sleeve_refused_total{reason} metric.
func (dp *dataPlane) sleeveRefused() map[string]uint64 {
	st := dp.sleeve.Stats()
	return map[string]uint64{
		"replayed": st.Replayed, "auth_failed": st.AuthFailed,
		"unknown_sender": st.UnknownSender, "malformed": st.Malformed,
	}
}

// routerStats are the forwarding core's counters (frames relayed, without route, too big,
// ICMP sent, fragmented, MAC moves), for metrics.
func (dp *dataPlane) routerStats() router.Stats { return dp.router.Stats() }
