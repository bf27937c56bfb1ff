package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/weavemesh/weave/internal/netlab"
)

// baselineMode is the reference every figure is divided by: the best a VXLAN overlay can do on
// this machine, with no code of ours in the path.
const baselineMode = "kernel-vxlan"

// A Mode is one way of carrying traffic between the two containers of the bench lab.
type Mode interface {
	// Name is the mode's name on the command line and in the results.
	Name() string
	// Description says in a few words what the mode measures.
	Description() string
	// Available returns why the mode cannot run here (a binary not built), or nil.
	Available(env *Env) error
	// Setup wires the data path in a fresh lab and returns the two ends to measure between. Any
	// process it starts must be started through the lab, which stops it on Close.
	Setup(ctx context.Context, env *Env) (Path, error)
}

// Env is what a mode gets to work with: a fresh two-host lab with one container per host, not
// attached to anything yet.
type Env struct {
	Lab        *netlab.Lab
	Hosts      [2]*netlab.Host
	Containers [2]*netlab.Container
	// BinDir holds weaver and weavectl (absolute path).
	BinDir string
	Log    *slog.Logger
}

// Path is what Setup returns: iperf3 and ping run from Client to ServerAddr; the iperf3 server
// runs on Server.
type Path struct {
	Client, Server netlab.Node
	ServerAddr     netip.Addr
	// Info describes the path as the mode sees it (e.g. the overlay the daemon reports).
	Info string
	// RouterPids are the processes of ours that carry the traffic (both weavers), whose CPU
	// time is the mode's cost; none for the kernel paths.
	RouterPids []int
}

// allModes is the registry, in the order the modes run. New modes are added here.
func allModes() []Mode {
	return []Mode{
		kernelVXLAN{},
		underlay{},
		// Our router. The "sleeve" overlay is forced with --no-fastdp; encryption with a password;
		// the cipher with the daemon's WEAVE_SLEEVE_CIPHERS debug knob (negotiation picks
		// AES-GCM when both ends offer it).
		weaveMode{name: "sleeve", desc: "weaver, userspace sleeve overlay, plaintext",
			args: []string{"--no-fastdp"}, wantOverlay: "sleeve"},
		weaveMode{name: "sleeve-aesgcm", desc: "weaver, userspace sleeve overlay, AES-256-GCM",
			args: []string{"--no-fastdp"}, password: "bench-password", wantOverlay: "sleeve",
			env: []string{"WEAVE_SLEEVE_CIPHERS=aes-gcm"}},
		weaveMode{name: "sleeve-secretbox", desc: "weaver, userspace sleeve overlay, NaCl secretbox (Weave's cipher)",
			args: []string{"--no-fastdp"}, password: "bench-password", wantOverlay: "sleeve",
			env: []string{"WEAVE_SLEEVE_CIPHERS=secretbox"}},
		// The same without GSO passthrough: TCP super-frames cut into segments before the
		// sleeve and merged again behind it (the path before passthrough), to show the gain.
		weaveMode{name: "sleeve-nogso", desc: "weaver, sleeve plaintext, GSO passthrough off",
			args: []string{"--no-fastdp"}, wantOverlay: "sleeve", env: []string{"WEAVE_NO_GSO=1"}},
		weaveMode{name: "fastdp", desc: "weaver, kernel VXLAN fast data path",
			wantOverlay: "fastdp"},
		// The default container MTU leaves room for the sleeve (62 bytes), so that a pair
		// falling back keeps its MTU; this mode measures fastdp at the reference's MTU (the
		// VXLAN MTU: underlay - 50), which a user gets with --mtu.
		weaveMode{name: "fastdp-mtu1450", desc: "weaver, kernel VXLAN fast data path, --mtu 1450 (the VXLAN MTU, as kernel-vxlan)",
			args: []string{"--mtu", strconv.Itoa(1500 - vxlanHeader)}, wantOverlay: "fastdp"},
	}
}

// containerPrefix holds the containers' addresses: outside Weave's default allocation range
// (10.32.0.0/12), so explicit attachments never meet the IPAM.
var containerPrefix = netip.MustParsePrefix("192.168.240.0/24")

func containerCIDR(i int) netip.Prefix {
	a := containerPrefix.Addr().As4()
	a[3] = byte(i + 1)
	return netip.PrefixFrom(netip.AddrFrom4(a), containerPrefix.Bits())
}

// underlay measures host to host over the plain underlay: the ceiling of any overlay.
type underlay struct{}

func (underlay) Name() string         { return "underlay" }
func (underlay) Description() string  { return "host to host over the plain underlay (no overlay)" }
func (underlay) Available(*Env) error { return nil }
func (underlay) Setup(_ context.Context, env *Env) (Path, error) {
	return Path{Client: env.Hosts[0], Server: env.Hosts[1], ServerAddr: env.Hosts[1].Addr, Info: "veth + bridge"}, nil
}

// kernelVXLAN joins the two hosts' bridges with a point-to-point kernel VXLAN device made by
// hand: what fastdp should approach.
type kernelVXLAN struct{}

const (
	vxlanBridge = "br-bench"
	vxlanDev    = "vx-bench"
	vxlanVNI    = "4242"
	vxlanPort   = "4789"
	vxlanHeader = 50 // outer IPv4 + UDP + VXLAN + inner Ethernet
)

func (kernelVXLAN) Name() string { return baselineMode }
func (kernelVXLAN) Description() string {
	return "containers over a hand-made kernel VXLAN between the bridges (baseline)"
}
func (kernelVXLAN) Available(*Env) error { return nil }

func (kernelVXLAN) Setup(ctx context.Context, env *Env) (Path, error) {
	mtu := 1500 - vxlanHeader
	for i, h := range env.Hosts {
		peer := env.Hosts[1-i]
		if err := h.EnsureBridge(ctx, vxlanBridge); err != nil {
			return Path{}, err
		}
		for _, argv := range [][]string{
			{"ip", "link", "add", "name", vxlanDev, "mtu", strconv.Itoa(mtu), "type", "vxlan", "id", vxlanVNI,
				"local", h.Addr.String(), "remote", peer.Addr.String(), "dstport", vxlanPort, "dev", netlab.UnderlayLink},
			{"ip", "link", "set", vxlanDev, "master", vxlanBridge, "up"},
		} {
			if _, err := h.Run(ctx, argv...); err != nil {
				return Path{}, fmt.Errorf("vxlan on %s: %w", h.Name, err)
			}
		}
		// The bridge now has the VXLAN's MTU, and the container's veth takes it.
		if err := h.AttachContainerToBridge(env.Containers[i], vxlanBridge, containerCIDR(i)); err != nil {
			return Path{}, err
		}
	}
	return Path{Client: env.Containers[0], Server: env.Containers[1], ServerAddr: env.Containers[1].Addr,
		Info: fmt.Sprintf("vxlan vni %s port %s mtu %d", vxlanVNI, vxlanPort, mtu)}, nil
}

// weaveMode runs our router (bin/weaver) on both hosts, peers them, attaches each container with
// `weavectl attach`, and checks that the connection uses the overlay the mode is named for.
type weaveMode struct {
	name, desc  string
	args        []string
	password    string
	wantOverlay string
	env         []string // extra environment of weaver
}

func (m weaveMode) Name() string        { return m.name }
func (m weaveMode) Description() string { return m.desc }

func (m weaveMode) Available(env *Env) error {
	for _, b := range []string{"weaver", "weavectl"} {
		if _, err := os.Stat(filepath.Join(env.BinDir, b)); err != nil {
			return fmt.Errorf("%s not built (make build): %w", b, err)
		}
	}
	return nil
}

// weaveReadyLimit bounds the wait for the routers to connect over the wanted overlay.
const weaveReadyLimit = 30 * time.Second

func (m weaveMode) Setup(ctx context.Context, env *Env) (Path, error) {
	socks := make([]string, len(env.Hosts))
	procs := make([]*netlab.Proc, len(env.Hosts))
	for i, h := range env.Hosts {
		dir, err := h.Dir()
		if err != nil {
			return Path{}, err
		}
		socks[i] = filepath.Join(dir, "weave.sock")
		argv := append([]string{filepath.Join(env.BinDir, "weaver"),
			"--state-dir", filepath.Join(dir, "state"), "--socket", socks[i],
			"--nickname", fmt.Sprintf("h%d", i+1)}, m.args...)
		if m.password != "" {
			argv = append(argv, "--password", m.password)
		}
		if i > 0 {
			argv = append(argv, env.Hosts[0].Addr.String())
		}
		if procs[i], err = h.Start("weaver", m.env, argv...); err != nil {
			return Path{}, err
		}
	}
	var info string
	// A router that exits is not worth waiting for: stop polling and say why.
	waitCtx, stopWaiting := context.WithCancel(ctx)
	defer stopWaiting()
	var exited error
	err := netlab.WaitFor(waitCtx, weaveReadyLimit, func() error {
		for i, p := range procs {
			if !p.Running() {
				exited = fmt.Errorf("weaver on h%d exited (%v): %s", i+1, p.Wait(), lastLines(p.Log(), 5))
				stopWaiting()
				return exited
			}
		}
		var err error
		info, err = m.connected(ctx, env, env.Hosts[1], socks[1])
		return err
	})
	if exited != nil {
		return Path{}, exited
	}
	if err != nil {
		return Path{}, fmt.Errorf("routers not connected over %s: %w", m.wantOverlay, err)
	}
	for i, h := range env.Hosts {
		c := env.Containers[i]
		if _, err := h.Run(ctx, "env", "WEAVE_SOCKET="+socks[i], filepath.Join(env.BinDir, "weavectl"),
			"attach", containerCIDR(i).String(), c.Name); err != nil {
			return Path{}, fmt.Errorf("attach %s: %w", c.Name, err)
		}
		c.Addr = containerCIDR(i).Addr()
	}
	pids := make([]int, len(procs))
	for i, p := range procs {
		pids[i] = p.Pid
	}
	return Path{Client: env.Containers[0], Server: env.Containers[1], ServerAddr: env.Containers[1].Addr, Info: info,
		RouterPids: pids}, nil
}

// connected asks the router of h for its report and returns nil once it has an established
// connection over the wanted overlay (encrypted if the mode has a password).
func (m weaveMode) connected(ctx context.Context, env *Env, h *netlab.Host, sock string) (string, error) {
	out, err := h.Run(ctx, "env", "WEAVE_SOCKET="+sock, filepath.Join(env.BinDir, "weavectl"), "report")
	if err != nil {
		return "", err
	}
	var rep struct {
		Router struct {
			Connections []struct {
				State     string `json:"state"`
				Overlay   string `json:"overlay"`
				Encrypted bool   `json:"encrypted"`
				MTU       int    `json:"mtu"`
			} `json:"connections"`
		} `json:"router"`
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		return "", fmt.Errorf("weavectl report: %w", err)
	}
	var seen []string
	for _, c := range rep.Router.Connections {
		seen = append(seen, fmt.Sprintf("%s/%s/encrypted=%v", c.State, c.Overlay, c.Encrypted))
		if c.State == "established" && c.Overlay == m.wantOverlay && c.Encrypted == (m.password != "") {
			return fmt.Sprintf("%s encrypted=%v mtu %d", c.Overlay, c.Encrypted, c.MTU), nil
		}
	}
	return "", fmt.Errorf("connections: [%s]", strings.Join(seen, " "))
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], " | ")
}
