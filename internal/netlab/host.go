package netlab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"sync"
)

// Runner runs a command somewhere and returns its combined output. *Host and *Container are
// Runners.
type Runner interface {
	Run(ctx context.Context, argv ...string) ([]byte, error)
}

// Node is a namespace of the lab that can run commands and processes: a *Host or a *Container.
type Node interface {
	Runner
	// Start runs a long-lived process in the node; see Host.Start.
	Start(name string, env []string, argv ...string) (*Proc, error)
	// Netns returns the namespace name (as in `ip netns list`).
	Netns() string
}

// Host is one machine of the lab: a namespace with a link UnderlayLink ("eth0") to the underlay.
type Host struct {
	// Name is the namespace name, "<prefix>-h1" for Hosts[0].
	Name string
	// Index is the position in Lab.Hosts.
	Index int
	// Addr is the host's own address on its underlay link. For a public host, that is the
	// address others reach it at (10.201.0.<Index+1>). For a host behind a NAT it is its private
	// address (10.202.<Index+1>.2), which no other host can reach.
	Addr netip.Addr
	// PublicAddr is the address others see the host's connections come from: Addr for a public
	// host, the NAT's underlay address (10.201.0.<Index+1>) for a NATed one.
	PublicAddr netip.Addr
	// NAT is the namespace name of the NAT in front of the host, empty for a public host.
	NAT string

	lab *Lab

	ipt sync.Mutex // serialises our iptables changes in this namespace

	mu         sync.Mutex
	chains     map[string]bool // iptables chains of ours already hooked in this namespace
	containers []*Container
	vethSeq    int
}

// Netns returns the host's namespace name.
func (h *Host) Netns() string { return h.Name }

// Lab returns the lab the host belongs to.
func (h *Host) Lab() *Lab { return h.lab }

// Run runs argv in the host's namespace and returns its combined output; the error includes
// the output.
func (h *Host) Run(ctx context.Context, argv ...string) ([]byte, error) {
	return h.lab.RunIn(ctx, h.Name, argv...)
}

// Start runs argv in the host's namespace in its own process group, with stdout and stderr
// written to "<Lab.Dir>/<host>-<name>.log" and env added to the current environment. The lab
// stops it (the whole group) on Close if it still runs.
func (h *Host) Start(name string, env []string, argv ...string) (*Proc, error) {
	return h.lab.start(h.Name, name, env, argv)
}

// Listen opens a listening socket inside the host's namespace (the socket stays there: a Go test
// can serve from it directly).
func (h *Host) Listen(network, address string) (net.Listener, error) {
	return listenIn(h.Name, network, address)
}

// ListenPacket opens a packet socket inside the host's namespace.
func (h *Host) ListenPacket(network, address string) (net.PacketConn, error) {
	return listenPacketIn(h.Name, network, address)
}

// DialContext dials from inside the host's namespace.
func (h *Host) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return dialIn(ctx, h.Name, network, address)
}

// Do runs fn on an OS thread inside h's namespace (for netlink calls of the code under
// test); sockets fn opens stay in that namespace.
func (h *Host) Do(fn func() error) error { return doIn(h.Name, fn) }

// Dir returns a directory of this host's own under Lab.Dir ("<Lab.Dir>/h1"), created on first
// use: the place for a daemon's state dir and control socket. Keep socket paths under 108 bytes.
func (h *Host) Dir() (string, error) {
	d := filepath.Join(h.lab.Dir, "h"+strconv.Itoa(h.Index+1))
	if err := os.MkdirAll(d, 0o755); err != nil {
		return "", fmt.Errorf("netlab: host dir: %w", err)
	}
	return d, nil
}

// Containers returns the containers added to the host so far.
func (h *Host) Containers() []*Container {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.containers)
}

// Container is a namespace standing for a container on a host. It starts with only loopback;
// `weavectl attach` or AttachContainerToBridge connects it.
type Container struct {
	// Name is the namespace name, "<host>-<name>", e.g. "<prefix>-h1-c1".
	Name string
	// Host is the host the container runs on.
	Host *Host
	// Addr is the address given by AttachContainerToBridge (invalid before that).
	Addr netip.Addr

	lab *Lab
}

// Netns returns the container's namespace name.
func (c *Container) Netns() string { return c.Name }

// Run runs argv in the container's namespace; see Host.Run.
func (c *Container) Run(ctx context.Context, argv ...string) ([]byte, error) {
	return c.lab.RunIn(ctx, c.Name, argv...)
}

// Start runs a long-lived process in the container's namespace; see Host.Start.
func (c *Container) Start(name string, env []string, argv ...string) (*Proc, error) {
	return c.lab.start(c.Name, name, env, argv)
}

// Listen opens a listening socket inside the container's namespace.
func (c *Container) Listen(network, address string) (net.Listener, error) {
	return listenIn(c.Name, network, address)
}

// ListenPacket opens a packet socket inside the container's namespace.
func (c *Container) ListenPacket(network, address string) (net.PacketConn, error) {
	return listenPacketIn(c.Name, network, address)
}

// DialContext dials from inside the container's namespace.
func (c *Container) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return dialIn(ctx, c.Name, network, address)
}

var containerName = regexp.MustCompile(`^[a-z0-9]{1,8}$`)

// AddContainer creates the namespace "<host>-<name>" with loopback up and nothing else. name is
// 1 to 8 lowercase letters or digits, unique on the host.
func (h *Host) AddContainer(name string) (*Container, error) {
	if !containerName.MatchString(name) {
		return nil, fmt.Errorf("netlab: container name %q: want 1-8 of [a-z0-9]", name)
	}
	c := &Container{Name: h.Name + "-" + name, Host: h, lab: h.lab}
	ctx, cancel := context.WithTimeout(context.Background(), buildLimit)
	defer cancel()
	if err := h.lab.addNetns(ctx, c.Name); err != nil {
		return nil, fmt.Errorf("add container %s: %w", name, err)
	}
	h.mu.Lock()
	h.containers = append(h.containers, c)
	h.mu.Unlock()
	return c, nil
}

// AttachContainerToBridge connects c to the Linux bridge of that name in h's namespace (made if
// missing) with a veth: "eth0" with address cidr inside c, "vc<N>" on the bridge. Both ends take
// the bridge's MTU at the time of the call, so add a lower-MTU port (a VXLAN device) first.
// It is the hand-made wiring for the bench references and for tests without our daemon.
func (h *Host) AttachContainerToBridge(c *Container, bridge string, cidr netip.Prefix) error {
	if c == nil || c.Host != h {
		return errors.New("netlab: attach: container does not belong to this host")
	}
	if !cidr.IsValid() {
		return errors.New("netlab: attach: invalid cidr")
	}
	ctx, cancel := context.WithTimeout(context.Background(), buildLimit)
	defer cancel()
	if err := h.EnsureBridge(ctx, bridge); err != nil {
		return err
	}
	mtu, err := linkMTU(ctx, h.Name, bridge)
	if err != nil {
		return err
	}
	h.mu.Lock()
	h.vethSeq++
	hostEnd := "vc" + strconv.Itoa(h.vethSeq)
	h.mu.Unlock()
	l := h.lab
	if err := l.veth(ctx, h.Name, hostEnd, c.Name, "eth0", mtu); err != nil {
		return fmt.Errorf("attach %s: %w", c.Name, err)
	}
	if err := l.ipAll(ctx, h.Name, []string{"link", "set", hostEnd, "master", bridge, "up"}); err != nil {
		return fmt.Errorf("attach %s: %w", c.Name, err)
	}
	if err := l.ipAll(ctx, c.Name,
		[]string{"addr", "add", cidr.String(), "dev", "eth0"},
		[]string{"link", "set", "eth0", "up"},
	); err != nil {
		return fmt.Errorf("attach %s: %w", c.Name, err)
	}
	c.Addr = cidr.Addr()
	return nil
}

// EnsureBridge creates the Linux bridge name in h's namespace (up, STP off) unless it exists.
func (h *Host) EnsureBridge(ctx context.Context, name string) error {
	if _, err := runCmd(ctx, "ip", "-n", h.Name, "link", "show", "dev", name); err == nil {
		return nil
	}
	if err := h.lab.ipAll(ctx, h.Name,
		[]string{"link", "add", "name", name, "type", "bridge"},
		[]string{"link", "set", name, "up"},
	); err != nil {
		return fmt.Errorf("create bridge %s in %s: %w", name, h.Name, err)
	}
	return nil
}

func linkMTU(ctx context.Context, ns, link string) (int, error) {
	out, err := runCmd(ctx, "ip", "-n", ns, "-j", "link", "show", "dev", link)
	if err != nil {
		return 0, err
	}
	var links []struct {
		MTU int `json:"mtu"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 || links[0].MTU <= 0 {
		return 0, fmt.Errorf("netlab: mtu of %s in %s: unexpected `ip -j link` output %q", link, ns, out)
	}
	return links[0].MTU, nil
}
