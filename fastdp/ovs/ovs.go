package ovs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/ovn-org/libovsdb/client"
	"github.com/ovn-org/libovsdb/model"
	"github.com/ovn-org/libovsdb/ovsdb"

	"github.com/weavemesh/weave/fastdp/ovs/vswitch"
	"github.com/weavemesh/weave/internal/logx"
)

// Defaults and the external_ids keys that mark our rows.
const (
	DefaultSocket = "/run/openvswitch/db.sock"
	DefaultBridge = "weave-ovs"
	DefaultOwner  = "weave"
	DefaultPort   = 6784

	KeyOwner = "weave-owner"
	KeyPeer  = "weave-peer"
	KeyRole  = "weave-role"

	roleBridge = "bridge"
	roleTunnel = "tunnel"
	roleLocal  = "local"
	// keyOwnedLink marks a local port whose Linux device Cleanup deletes.
	keyOwnedLink = "weave-owned-link"

	tunnelPrefix = "wvx"

	// forwardBPDU lets NORMAL forward frames to reserved group addresses (01:80:c2:00:00:0x),
	// which it drops by default: fastdp's heartbeats go to 01:80:c2:00:00:0e, chosen because a
	// Linux bridge never forwards that group to containers.
	forwardBPDU = "forward-bpdu"

	// QuarantineVLAN holds the tunnel ports of inactive peers (SetPeerActive): an access
	// port of a VLAN no other port carries, so NORMAL forwards nothing to or from it.
	QuarantineVLAN = 4094
)

// untaggedOnly is the trunks value of every other port of ours: a port without a tag and
// without trunks would carry every VLAN, quarantined frames included (tagged).
var untaggedOnly = []int{0}

// trunksFor is the trunks column that goes with a port's tag: an access port (tagged) has
// none (OVS would ignore them, and warn at each reconfiguration).
func trunksFor(tag *int) []int {
	if tag != nil {
		return nil
	}
	return untaggedOnly
}

// Links is the OS boundary for the Linux devices behind local ports. NetlinkLinks is the
// real one.
type Links interface {
	// DeleteLink deletes a device; a missing one is not an error.
	DeleteLink(name string) error
	// Uplink creates or completes the veth pair ovsEnd <-> bridgeEnd, bridgeEnd an isolated
	// port of the Linux bridge, both ends with mtu (0: the bridge's), up, TX checksum
	// offload off.
	Uplink(bridge, ovsEnd, bridgeEnd string, mtu int) error
}

// Names of the veth pair joining the weave Linux bridge to our OVS bridge.
const (
	UplinkOVS    = "vethwe-ovs"
	UplinkBridge = "vethwe-ovsbr"
)

// Config configures a Backend.
type Config struct {
	// Socket is the ovsdb-server unix socket (DefaultSocket if empty).
	Socket string
	// Bridge is the OVS bridge we own (DefaultBridge if empty).
	Bridge string
	// DatapathType is the bridge's datapath_type: "" or "system" for the kernel datapath,
	// "netdev" for the userspace one.
	DatapathType string
	// Port is the VXLAN UDP destination port (--port+1; DefaultPort if 0).
	Port int
	// VNI keeps meshes sharing an underlay apart (fastdp.VNIFor); at most 2^24-1.
	VNI uint32
	// Owner is stored in external_ids weave-owner of every row we create (DefaultOwner if
	// empty); rows with another owner are never touched.
	Owner string
	// Links deletes owned local devices on Cleanup; nil: they are left alone.
	Links Links
	// Timeout bounds connecting and each operation (default 10s).
	Timeout time.Duration
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
}

// Backend programs one OVS bridge through ovsdb-server. Its methods are safe for concurrent
// use; Close is idempotent.
type Backend struct {
	cfg Config
	log *slog.Logger
	ovs client.Client

	mu     sync.Mutex // serialises read-check-write sequences against the cache
	closed bool
}

// ErrNotOurs is returned when a row with our name exists but carries another owner.
var ErrNotOurs = errors.New("exists and is not ours")

var ifname = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)

// New connects to ovsdb-server and starts monitoring the tables we use. It does not change
// anything yet: call EnsureBridge.
func New(ctx context.Context, cfg Config) (*Backend, error) {
	if cfg.Socket == "" {
		cfg.Socket = DefaultSocket
	}
	if cfg.Bridge == "" {
		cfg.Bridge = DefaultBridge
	}
	if cfg.Owner == "" {
		cfg.Owner = DefaultOwner
	}
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	switch {
	case !ifname.MatchString(cfg.Bridge):
		return nil, fmt.Errorf("ovs: bridge name %q: want 1-15 of [A-Za-z0-9_.-]", cfg.Bridge)
	case cfg.Port < 1 || cfg.Port > 65535:
		return nil, fmt.Errorf("ovs: vxlan port %d out of range", cfg.Port)
	case cfg.VNI >= 1<<24:
		return nil, fmt.Errorf("ovs: vni %d does not fit 24 bits", cfg.VNI)
	case cfg.DatapathType != "" && cfg.DatapathType != "system" && cfg.DatapathType != "netdev":
		return nil, fmt.Errorf("ovs: datapath type %q: want system or netdev", cfg.DatapathType)
	}
	dbm, err := vswitch.FullDatabaseModel()
	if err != nil {
		return nil, fmt.Errorf("ovs: database model: %w", err)
	}
	// libovsdb logs through logr; its verbose levels are debug for us.
	// libovsdb logs with keys of its own: grouped, so they never clash with ours.
	lr := logr.FromSlogHandler(cfg.Logger.WithGroup("libovsdb").Handler())
	c, err := client.NewOVSDBClient(dbm, client.WithEndpoint("unix:"+cfg.Socket), client.WithLogger(&lr))
	if err != nil {
		return nil, fmt.Errorf("ovs: new client: %w", err)
	}
	cctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	if err := c.Connect(cctx); err != nil {
		return nil, fmt.Errorf("ovs: connect %s: %w", cfg.Socket, err)
	}
	if _, err := c.MonitorAll(cctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("ovs: monitor %s: %w", cfg.Socket, err)
	}
	return &Backend{cfg: cfg, log: cfg.Logger.With(logx.KeyDevice, cfg.Bridge), ovs: c}, nil
}

// Close disconnects from ovsdb-server, leaving the configuration in place (like
// `weavectl stop`); Cleanup removes it.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	b.ovs.Close()
	return nil
}

// Bridge returns the name of the bridge we own.
func (b *Backend) Bridge() string { return b.cfg.Bridge }

func (b *Backend) ours(ids map[string]string) bool { return ids[KeyOwner] == b.cfg.Owner }

func (b *Backend) ids(role string, kv ...string) map[string]string {
	m := map[string]string{KeyOwner: b.cfg.Owner, KeyRole: role}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

func (b *Backend) op() (context.Context, context.CancelFunc, error) {
	if b.closed {
		return nil, nil, errors.New("ovs: backend closed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.Timeout)
	return ctx, cancel, nil
}

// locked runs fn under b.mu with a context bounded by the configured timeout: one
// read-check-write against the database at a time.
func (b *Backend) locked(fn func(ctx context.Context) error) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	ctx, cancel, err := b.op()
	if err != nil {
		return err
	}
	defer cancel()
	return fn(ctx)
}

// transact runs ops and checks every result; then it waits until the cache shows done(),
// so that the next read-check-write sees this one.
func (b *Backend) transact(ctx context.Context, what string, done func() bool, ops ...ovsdb.Operation) error {
	res, err := b.ovs.Transact(ctx, ops...)
	if err != nil {
		return fmt.Errorf("ovs: %s: %w", what, err)
	}
	if _, err := ovsdb.CheckOperationResults(res, ops); err != nil {
		return fmt.Errorf("ovs: %s: %w", what, err)
	}
	for done != nil && !done() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("ovs: %s: waiting for the update: %w", what, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}

func (b *Backend) bridge(name string) *vswitch.Bridge {
	return cached(b, func(br *vswitch.Bridge) bool { return br.Name == name })
}

func (b *Backend) port(name string) *vswitch.Port {
	return cached(b, func(p *vswitch.Port) bool { return p.Name == name })
}

func (b *Backend) iface(name string) *vswitch.Interface {
	return cached(b, func(i *vswitch.Interface) bool { return i.Name == name })
}

// cached returns the first row of the local cache that match accepts, or nil.
func cached[T any](b *Backend, match func(*T) bool) *T {
	var found []T
	_ = b.ovs.WhereCache(match).List(context.Background(), &found)
	if len(found) == 0 {
		return nil
	}
	return &found[0]
}

func (b *Backend) root() (*vswitch.OpenvSwitch, error) {
	var rows []vswitch.OpenvSwitch
	if err := b.ovs.List(context.Background(), &rows); err != nil {
		return nil, fmt.Errorf("ovs: list Open_vSwitch: %w", err)
	}
	if len(rows) != 1 {
		return nil, fmt.Errorf("ovs: Open_vSwitch table has %d rows, want 1 (database not initialised?)", len(rows))
	}
	return &rows[0], nil
}

// EnsureBridge creates our bridge (with its internal port, as ovs-vsctl add-br does) unless
// it exists; an existing bridge of that name that is not ours is refused with ErrNotOurs.
func (b *Backend) EnsureBridge() error {
	return b.locked(func(ctx context.Context) error {
		name := b.cfg.Bridge
		if br := b.bridge(name); br != nil {
			if !b.ours(br.ExternalIDs) {
				return fmt.Errorf("ovs: bridge %s: %w", name, ErrNotOurs)
			}
			if br.DatapathType != b.cfg.DatapathType || br.OtherConfig[forwardBPDU] != "true" {
				upd := *br
				upd.DatapathType = b.cfg.DatapathType
				upd.OtherConfig = maps.Clone(br.OtherConfig)
				if upd.OtherConfig == nil {
					upd.OtherConfig = map[string]string{}
				}
				upd.OtherConfig[forwardBPDU] = "true"
				ops, err := b.ovs.Where(&upd).Update(&upd, &upd.DatapathType, &upd.OtherConfig)
				if err != nil {
					return fmt.Errorf("ovs: update bridge %s: %w", name, err)
				}
				return b.transact(ctx, "update bridge "+name, func() bool {
					br := b.bridge(name)
					return br != nil && br.OtherConfig[forwardBPDU] == "true" && br.DatapathType == b.cfg.DatapathType
				}, ops...)
			}
			return nil
		}
		root, err := b.root()
		if err != nil {
			return err
		}
		iface := &vswitch.Interface{UUID: "iface", Name: name, Type: "internal", ExternalIDs: b.ids(roleBridge)}
		port := &vswitch.Port{UUID: "port", Name: name, Interfaces: []string{iface.UUID}, Trunks: untaggedOnly, ExternalIDs: b.ids(roleBridge)}
		br := &vswitch.Bridge{UUID: "bridge", Name: name, DatapathType: b.cfg.DatapathType,
			Ports: []string{port.UUID}, ExternalIDs: b.ids(roleBridge),
			OtherConfig: map[string]string{forwardBPDU: "true"}}
		ops, err := b.ovs.Create(iface, port, br)
		if err != nil {
			return fmt.Errorf("ovs: create bridge %s: %w", name, err)
		}
		mut, err := b.ovs.Where(root).Mutate(root, model.Mutation{
			Field: &root.Bridges, Mutator: ovsdb.MutateOperationInsert, Value: []string{br.UUID}})
		if err != nil {
			return fmt.Errorf("ovs: add bridge %s: %w", name, err)
		}
		if err := b.transact(ctx, "create bridge "+name, func() bool { return b.bridge(name) != nil }, append(ops, mut...)...); err != nil {
			return err
		}
		b.log.Info("created OVS bridge", logx.KeyMode, b.cfg.DatapathType)
		return nil
	})
}

// addPortTagged adds a port with one interface to our bridge, in VLAN tag (nil: untagged
// frames only), or updates the interface's type and options when the port is already there
// and ours (its tag stays).
func (b *Backend) addPortTagged(ctx context.Context, name, typ string, options map[string]string, protected bool, tag *int, ids map[string]string) error {
	br := b.bridge(b.cfg.Bridge)
	if br == nil || !b.ours(br.ExternalIDs) {
		return fmt.Errorf("ovs: add port %s: bridge %s missing or not ours (EnsureBridge first)", name, b.cfg.Bridge)
	}
	if p := b.port(name); p != nil {
		if !b.ours(p.ExternalIDs) {
			return fmt.Errorf("ovs: port %s: %w", name, ErrNotOurs)
		}
		i := b.iface(name)
		if i == nil {
			return fmt.Errorf("ovs: port %s has no interface %s", name, name)
		}
		if i.Type == typ && maps.Equal(i.Options, options) {
			return nil
		}
		upd := *i
		upd.Type, upd.Options = typ, options
		ops, err := b.ovs.Where(&upd).Update(&upd, &upd.Type, &upd.Options)
		if err != nil {
			return fmt.Errorf("ovs: update interface %s: %w", name, err)
		}
		return b.transact(ctx, "update interface "+name, func() bool {
			i := b.iface(name)
			return i != nil && maps.Equal(i.Options, options)
		}, ops...)
	}
	iface := &vswitch.Interface{UUID: "iface", Name: name, Type: typ, Options: options, ExternalIDs: ids}
	port := &vswitch.Port{UUID: "port", Name: name, Interfaces: []string{iface.UUID}, Protected: protected,
		Tag: tag, Trunks: trunksFor(tag), ExternalIDs: ids}
	ops, err := b.ovs.Create(iface, port)
	if err != nil {
		return fmt.Errorf("ovs: create port %s: %w", name, err)
	}
	mut, err := b.ovs.Where(br).Mutate(br, model.Mutation{
		Field: &br.Ports, Mutator: ovsdb.MutateOperationInsert, Value: []string{port.UUID}})
	if err != nil {
		return fmt.Errorf("ovs: attach port %s: %w", name, err)
	}
	return b.transact(ctx, "add port "+name, func() bool { return b.port(name) != nil }, append(ops, mut...)...)
}

// removePort detaches a port of ours from whichever bridge holds it; OVSDB garbage-collects
// the port and its interfaces. A missing port is not an error.
func (b *Backend) removePort(ctx context.Context, name string) error {
	p := b.port(name)
	if p == nil {
		return nil
	}
	if !b.ours(p.ExternalIDs) {
		return fmt.Errorf("ovs: port %s: %w", name, ErrNotOurs)
	}
	var brs []vswitch.Bridge
	_ = b.ovs.WhereCache(func(br *vswitch.Bridge) bool {
		return slices.Contains(br.Ports, p.UUID)
	}).List(ctx, &brs)
	var ops []ovsdb.Operation
	for i := range brs {
		br := &brs[i]
		mut, err := b.ovs.Where(br).Mutate(br, model.Mutation{
			Field: &br.Ports, Mutator: ovsdb.MutateOperationDelete, Value: []string{p.UUID}})
		if err != nil {
			return fmt.Errorf("ovs: detach port %s: %w", name, err)
		}
		ops = append(ops, mut...)
	}
	if len(ops) == 0 {
		return nil
	}
	return b.transact(ctx, "remove port "+name, func() bool { return b.port(name) == nil }, ops...)
}

// AddLocalPort adds the existing Linux interface dev (a veth end towards the weave Linux
// bridge, or a container's) to our bridge. With owned set, Cleanup deletes the device too.
func (b *Backend) AddLocalPort(dev string, owned bool) error { return b.addLocalPort(dev, owned, nil) }

// addLocalPort is AddLocalPort with the port's VLAN tag (nil: untagged frames only).
func (b *Backend) addLocalPort(dev string, owned bool, tag *int) error {
	if !ifname.MatchString(dev) || strings.HasPrefix(dev, tunnelPrefix) || dev == b.cfg.Bridge {
		return fmt.Errorf("ovs: local port name %q not allowed", dev)
	}
	return b.locked(func(ctx context.Context) error {
		ids := b.ids(roleLocal)
		if owned {
			ids[keyOwnedLink] = "true"
		}
		return b.addPortTagged(ctx, dev, "", nil, false, tag, ids)
	})
}

// AttachLinuxBridge joins the Linux bridge (the weave bridge, where containers, the CNI
// plugin and the router's TAP live) to our OVS bridge with the veth pair UplinkOVS <->
// UplinkBridge, owned by us: Cleanup deletes it. mtu is the overlay MTU (underlay MTU minus
// the VXLAN overhead, fastdp.MTUFor); 0 takes the Linux bridge's. Idempotent.
func (b *Backend) AttachLinuxBridge(bridge string, mtu int) error {
	if b.cfg.Links == nil {
		return errors.New("ovs: attach linux bridge: no Links configured")
	}
	if err := b.cfg.Links.Uplink(bridge, UplinkOVS, UplinkBridge, mtu); err != nil {
		return err
	}
	return b.AddLocalPort(UplinkOVS, true)
}

// RemoveLocalPort detaches dev from our bridge (the device itself stays).
func (b *Backend) RemoveLocalPort(dev string) error {
	return b.locked(func(ctx context.Context) error {
		return b.removePort(ctx, dev)
	})
}

// InterfaceError returns what ovs-vswitchd reports in the error column of our port's
// interface (e.g. a device that does not exist), or "" when it is fine.
func (b *Backend) InterfaceError(name string) string {
	if i := b.iface(name); i != nil && i.Error != nil {
		return *i.Error
	}
	return ""
}

// Cleanup removes every bridge and port of ours (whatever Config.Bridge was when they were
// made) and deletes the Linux devices of owned local ports. Running it twice is harmless.
func (b *Backend) Cleanup() error {
	return b.locked(func(ctx context.Context) error {
		var owned []string
		var ifs []vswitch.Interface
		_ = b.ovs.WhereCache(func(i *vswitch.Interface) bool {
			return b.ours(i.ExternalIDs) && i.ExternalIDs[keyOwnedLink] == "true"
		}).List(ctx, &ifs)
		for _, i := range ifs {
			owned = append(owned, i.Name)
		}

		root, err := b.root()
		if err != nil {
			return err
		}
		var ops []ovsdb.Operation
		var brs []vswitch.Bridge
		_ = b.ovs.WhereCache(func(br *vswitch.Bridge) bool { return true }).List(ctx, &brs)
		ourPort := map[string]bool{}
		var ports []vswitch.Port
		_ = b.ovs.WhereCache(func(p *vswitch.Port) bool { return b.ours(p.ExternalIDs) }).List(ctx, &ports)
		for _, p := range ports {
			ourPort[p.UUID] = true
		}
		var gone []string
		for i := range brs {
			br := &brs[i]
			if b.ours(br.ExternalIDs) {
				gone = append(gone, br.UUID)
				continue
			}
			// Someone else's bridge: take only our ports off it.
			var del []string
			for _, u := range br.Ports {
				if ourPort[u] {
					del = append(del, u)
				}
			}
			if len(del) > 0 {
				mut, err := b.ovs.Where(br).Mutate(br, model.Mutation{
					Field: &br.Ports, Mutator: ovsdb.MutateOperationDelete, Value: del})
				if err != nil {
					return fmt.Errorf("ovs: cleanup bridge %s: %w", br.Name, err)
				}
				ops = append(ops, mut...)
			}
		}
		if len(gone) > 0 {
			mut, err := b.ovs.Where(root).Mutate(root, model.Mutation{
				Field: &root.Bridges, Mutator: ovsdb.MutateOperationDelete, Value: gone})
			if err != nil {
				return fmt.Errorf("ovs: cleanup: %w", err)
			}
			ops = append(ops, mut...)
		}
		if len(ops) > 0 {
			done := func() bool {
				var left []vswitch.Port
				_ = b.ovs.WhereCache(func(p *vswitch.Port) bool { return b.ours(p.ExternalIDs) }).List(ctx, &left)
				return len(left) == 0
			}
			if err := b.transact(ctx, "cleanup", done, ops...); err != nil {
				return err
			}
			b.log.Info("removed OVS bridges and ports", logx.KeyCount, len(gone)+len(ports))
		}
		var errs []error
		if b.cfg.Links != nil {
			for _, dev := range owned {
				if err := b.cfg.Links.DeleteLink(dev); err != nil {
					errs = append(errs, fmt.Errorf("ovs: cleanup: delete %s: %w", dev, err))
				}
			}
		}
		return errors.Join(errs...)
	})
}
