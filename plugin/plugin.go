package plugin

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/weavemesh/weave/api"
	"github.com/weavemesh/weave/api/client"
	"github.com/weavemesh/weave/internal/logx"
	"github.com/weavemesh/weave/internal/netdev"
	wversion "github.com/weavemesh/weave/internal/version"
)

// SupportedVersions are the CNI spec versions the plugin speaks.
var SupportedVersions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// Router is the part of the router's control API the plugin uses; *client.Client is one.
type Router interface {
	Status(ctx context.Context) (api.Status, error)
	Expose(ctx context.Context, cidrs []string) (api.Endpoint, error)
	IPAMAllocate(ctx context.Context, req api.IPAMRequest) (api.IPAMResponse, error)
	IPAMRelease(ctx context.Context, req api.IPAMRequest) (api.IPAMReleaseResponse, error)
	IPAMAllocations(ctx context.Context) ([]api.Allocation, error)
	Close()
}

// Delegate runs another IPAM plugin (ipam.type set); invoke's Delegate* functions are one.
type Delegate interface {
	Add(ctx context.Context, plugin string, conf []byte) (types.Result, error)
	Check(ctx context.Context, plugin string, conf []byte) error
	Del(ctx context.Context, plugin string, conf []byte) error
	GC(ctx context.Context, plugin string, conf []byte) error
}

// Options configure a Plugin. Zero fields get the real implementations.
type Options struct {
	Logger *slog.Logger
	// Dial returns a client of the router listening on socket.
	Dial func(socket string) Router
	// Host does the plumbing (netlink, namespaces).
	Host Host
	// Delegate runs delegated IPAM plugins.
	Delegate Delegate
	// Timeout bounds one command (an allocation may wait for the IPAM ring to be ready).
	Timeout time.Duration
}

// Plugin implements the CNI verbs; its methods have skel's signature.
type Plugin struct {
	log      *slog.Logger
	dial     func(string) Router
	host     Host
	delegate Delegate
	timeout  time.Duration
}

// New returns a plugin.
func New(o Options) *Plugin {
	p := &Plugin{log: o.Logger, dial: o.Dial, host: o.Host, delegate: o.Delegate, timeout: o.Timeout}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	if p.dial == nil {
		p.dial = func(s string) Router { return client.New(s) }
	}
	if p.host == nil {
		p.host = LinuxHost{}
	}
	if p.delegate == nil {
		p.delegate = execDelegate{}
	}
	if p.timeout == 0 {
		p.timeout = 60 * time.Second
	}
	return p
}

// Main is weave-cni's main: it reads the CNI environment and stdin and answers on stdout.
// Without CNI_COMMAND it also runs "weave-cni install" (plugin and example conflist onto
// the node) and "weave-cni status" (exit 0 once the router is ready: a readiness probe).
func Main() {
	if os.Getenv("CNI_COMMAND") == "" {
		if code, ok := command(os.Args[1:], os.Stdout, os.Stderr); ok {
			os.Exit(code)
		}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).
		With("component", "weave-cni")
	p := New(Options{Logger: log})
	skel.PluginMainFuncs(skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, Status: p.Status, GC: p.GC},
		version.PluginSupports(SupportedVersions...), "weave-cni "+wversion.String())
}

// allocID is the router's IPAM key for a container of this network. The prefix keeps GC to
// the network's own allocations: weavectl attach, expose and other networks are not ours.
func allocID(network, containerID string) string {
	return "cni:" + network + ":" + containerID
}

// hostIfName names the host end of the veth: Weave's "vethwepl" prefix (operators grep for
// it) and a hash of container and interface, so a second interface of a pod gets its own.
func hostIfName(containerID, ifName string) string {
	h := sha256.Sum256([]byte(containerID + "/" + ifName))
	return "vethwepl" + hex.EncodeToString(h[:])[:7]
}

func (p *Plugin) context() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), p.timeout)
}

// Add attaches the container (see AddResult) and prints the result for the runtime.
func (p *Plugin) Add(args *skel.CmdArgs) error {
	res, err := p.AddResult(args)
	if err != nil {
		return err
	}
	return res.Print()
}

// AddResult attaches the container: veth on the bridge, an address, routes via the bridge.
// The result is in the version the configuration asks for.
func (p *Plugin) AddResult(args *skel.CmdArgs) (types.Result, error) {
	conf, err := parseArgs(args, true)
	if err != nil {
		return nil, err
	}
	if same, err := p.host.IsOwnNetns(args.Netns); err != nil {
		return nil, types.NewError(types.ErrInvalidNetNS, "weave-cni: cannot open the container's network namespace", err.Error())
	} else if same {
		return nil, types.NewError(types.ErrInvalidNetNS, "weave-cni: refusing to attach the host's own network namespace", args.Netns)
	}
	ctx, cancel := p.context()
	defer cancel()
	br, err := p.host.Bridge(conf.Bridge)
	if err != nil {
		return nil, types.NewError(types.ErrTryAgainLater, fmt.Sprintf("weave-cni: bridge %q is not there: is the weave router running on this node?", conf.Bridge), err.Error())
	}
	mtu := conf.MTU
	if mtu == 0 {
		mtu = br.MTU
	}

	var ipc *current.IPConfig
	var routes []*types.Route
	var dns types.DNS
	release := func() {}
	if conf.IPAM.Type != "" {
		r, err := p.delegate.Add(ctx, conf.IPAM.Type, args.StdinData)
		if err != nil {
			return nil, delegateError("ADD", conf.IPAM.Type, err)
		}
		release = func() { _ = p.delegate.Del(context.Background(), conf.IPAM.Type, args.StdinData) }
		res, err := current.NewResultFromResult(r)
		if err != nil {
			release()
			return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("weave-cni: cannot read the result of ipam plugin %q", conf.IPAM.Type), err.Error())
		}
		if len(res.IPs) == 0 {
			release()
			return nil, types.NewError(types.ErrInternal, fmt.Sprintf("weave-cni: ipam plugin %q returned no address", conf.IPAM.Type), "")
		}
		ipc, routes, dns = res.IPs[0], res.Routes, res.DNS
		if len(routes) == 0 && ipc.Gateway != nil {
			routes = []*types.Route{{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: ipc.Gateway}}
		}
	} else {
		rt := p.dial(conf.Socket)
		defer rt.Close()
		id := allocID(conf.Name, args.ContainerID)
		resp, err := rt.IPAMAllocate(ctx, api.IPAMRequest{ID: id, Iface: args.IfName, Subnet: conf.IPAM.Subnet})
		if err != nil {
			return nil, routerError("allocate an address", conf.Socket, err)
		}
		release = func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, _ = rt.IPAMRelease(ctx, api.IPAMRequest{ID: id, Iface: args.IfName})
		}
		cidr, err := firstV4(resp.CIDRs)
		if err != nil {
			release()
			return nil, types.NewError(types.ErrInternal, "weave-cni: the router gave an unusable address", err.Error())
		}
		gw, err := p.gateway(ctx, rt, conf, cidr)
		if err != nil {
			release()
			return nil, err
		}
		ipc = &current.IPConfig{Address: *netdev.IPNet(cidr), Gateway: gw.AsSlice()}
		routes = []*types.Route{{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: gw.AsSlice()}}
		dns = conf.DNS
	}

	addr, ok := netdev.Prefix(&ipc.Address)
	if !ok {
		release()
		return nil, types.NewError(types.ErrInternal, "weave-cni: unusable address", ipc.Address.String())
	}
	hostIf := hostIfName(args.ContainerID, args.IfName)
	att, err := p.host.Attach(AttachSpec{
		NetnsPath: args.Netns, IfName: args.IfName, HostIfName: hostIf, Bridge: conf.Bridge,
		MTU: mtu, Hairpin: conf.Hairpin(), CIDR: addr, Routes: routes,
	})
	if err != nil {
		// Attach has removed what it made, and only that: deleting by name here would take
		// an interface another plugin or the runtime put there. The address goes back too.
		release()
		if errors.Is(err, ErrIfaceExists) {
			p.log.Warn("add refused: interface exists", logx.KeyContainer, args.ContainerID, logx.KeyNetns, args.Netns, logx.KeyDevice, args.IfName, logx.KeyErr, err)
			return nil, types.NewError(types.ErrInvalidEnvironmentVariables,
				fmt.Sprintf("weave-cni: interface %s exists already in %s and is not weave's: refusing to replace or remove it", args.IfName, args.Netns),
				err.Error())
		}
		return nil, types.NewError(types.ErrInternal, fmt.Sprintf("weave-cni: cannot attach %s in %s to bridge %s", args.IfName, args.Netns, conf.Bridge), err.Error())
	}
	ipc.Interface = current.Int(1)
	result := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: hostIf, Mac: att.HostMAC.String()},
			{Name: args.IfName, Mac: att.MAC.String(), Mtu: mtu, Sandbox: args.Netns},
		},
		IPs:    []*current.IPConfig{ipc},
		Routes: att.Routes,
		DNS:    dns,
	}
	p.log.Info("added", logx.KeyContainer, args.ContainerID, logx.KeyCIDR, addr, logx.KeyDevice, hostIf)
	return result.GetAsVersion(conf.CNIVersion)
}

// gateway returns the bridge's address in cidr's network, exposing the host (an address
// for the bridge from the router's IPAM) when the bridge has none there yet.
func (p *Plugin) gateway(ctx context.Context, rt Router, conf *NetConf, cidr netip.Prefix) (netip.Addr, error) {
	find := func() (netip.Addr, error) {
		br, err := p.host.Bridge(conf.Bridge)
		if err != nil {
			return netip.Addr{}, err
		}
		for _, a := range br.Addrs {
			if a.Addr().Is4() && cidr.Masked().Contains(a.Addr()) {
				return a.Addr(), nil
			}
		}
		return netip.Addr{}, nil
	}
	if gw, err := find(); err != nil || gw.IsValid() {
		if err != nil {
			return gw, types.NewError(types.ErrInternal, "weave-cni: cannot read the bridge's addresses", err.Error())
		}
		return gw, nil
	}
	// Parallel ADDs of a fresh node all find no gateway: one exposes, the others wait for it
	// and then see its address, so the bridge gets exactly one.
	unlock, err := p.host.Lock(filepath.Join(filepath.Dir(conf.Socket), "weave-cni-expose.lock"))
	if err != nil {
		return netip.Addr{}, types.NewError(types.ErrInternal, "weave-cni: cannot take the expose lock", err.Error())
	}
	defer unlock()
	if gw, err := find(); err != nil || gw.IsValid() {
		if err != nil {
			return gw, types.NewError(types.ErrInternal, "weave-cni: cannot read the bridge's addresses", err.Error())
		}
		return gw, nil
	}
	ep, err := rt.Expose(ctx, nil)
	if err != nil {
		return netip.Addr{}, routerError("give the bridge a gateway address (expose)", conf.Socket, err)
	}
	for _, c := range ep.CIDRs {
		if pfx, err := netip.ParsePrefix(c); err == nil && pfx.Addr().Is4() && cidr.Masked().Contains(pfx.Addr()) {
			return pfx.Addr(), nil
		}
	}
	return netip.Addr{}, types.NewError(types.ErrInternal,
		fmt.Sprintf("weave-cni: the bridge %s has no address in %s to serve as the pods' gateway", conf.Bridge, cidr.Masked()),
		fmt.Sprintf("expose gave %v; run `weavectl expose` with an address in that subnet", ep.CIDRs))
}

// Del detaches the container and releases its address. It succeeds when there is nothing
// left to do: no namespace, no interface, an unknown container.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	conf, err := parseArgs(args, false)
	if err != nil {
		return err
	}
	ctx, cancel := p.context()
	defer cancel()
	if args.Netns != "" {
		if err := p.host.Detach(args.Netns, args.IfName, hostIfName(args.ContainerID, args.IfName)); err != nil {
			// The address is still released: a stale interface is harmless, a leaked address is not.
			p.log.Warn("detach failed", logx.KeyContainer, args.ContainerID, logx.KeyNetns, args.Netns, logx.KeyErr, err)
		}
	} else {
		_ = p.host.Detach("", args.IfName, hostIfName(args.ContainerID, args.IfName))
	}
	if conf.IPAM.Type != "" {
		if err := p.delegate.Del(ctx, conf.IPAM.Type, args.StdinData); err != nil {
			return delegateError("DEL", conf.IPAM.Type, err)
		}
		return nil
	}
	rt := p.dial(conf.Socket)
	defer rt.Close()
	if _, err := rt.IPAMRelease(ctx, api.IPAMRequest{ID: allocID(conf.Name, args.ContainerID), Iface: args.IfName}); err != nil {
		var ae *api.Error
		if errors.As(err, &ae) && ae.Code == api.CodeNotFound {
			return nil
		}
		return routerError("release the address", conf.Socket, err)
	}
	return nil
}

// Check verifies that what ADD left is still in place: interface, address, routes, and (own
// IPAM) the router still holding the address.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	conf, err := parseArgs(args, true)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "weave-cni: CHECK needs the prevResult of ADD", "")
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "weave-cni: cannot read prevResult", err.Error())
	}
	ctx, cancel := p.context()
	defer cancel()
	want := Expected{NetnsPath: args.Netns, IfName: args.IfName, Bridge: conf.Bridge,
		HostIfName: hostIfName(args.ContainerID, args.IfName), Routes: prev.Routes}
	idx := -1
	for i, itf := range prev.Interfaces {
		if itf.Name == args.IfName && itf.Sandbox != "" {
			idx, want.MAC = i, itf.Mac
		}
	}
	if idx < 0 {
		return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("weave-cni: prevResult has no interface %s in a sandbox", args.IfName), "")
	}
	for _, ipc := range prev.IPs {
		if ipc.Interface != nil && *ipc.Interface == idx {
			want.IPs = append(want.IPs, ipc)
		}
	}
	if len(want.IPs) == 0 {
		return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("weave-cni: prevResult has no address on %s", args.IfName), "")
	}
	if conf.IPAM.Type != "" {
		if err := p.delegate.Check(ctx, conf.IPAM.Type, args.StdinData); err != nil {
			return delegateError("CHECK", conf.IPAM.Type, err)
		}
	} else {
		rt := p.dial(conf.Socket)
		defer rt.Close()
		allocs, err := rt.IPAMAllocations(ctx)
		if err != nil {
			return routerError("list allocations", conf.Socket, err)
		}
		id := allocID(conf.Name, args.ContainerID)
		for _, ipc := range want.IPs {
			if !holds(allocs, id, args.IfName, ipc.Address.String()) {
				return types.NewError(types.ErrInternal, fmt.Sprintf("weave-cni: the router no longer holds %s for container %s (%s)", ipc.Address.String(), args.ContainerID, args.IfName), "delete and re-create the pod")
			}
		}
	}
	if err := p.host.Check(want); err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("weave-cni: %s in %s is not as ADD left it", args.IfName, args.Netns), err.Error())
	}
	return nil
}

func holds(allocs []api.Allocation, id, iface, cidr string) bool {
	for _, a := range allocs {
		if a.ID == id && a.Iface == iface && slices.Contains(a.CIDRs, cidr) {
			return true
		}
	}
	return false
}

// Status reports whether ADDs can succeed: error 50 while the router is down or not ready,
// so the node reports its network as not ready instead of failing pods.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	conf, err := ParseNetConf(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rt := p.dial(conf.Socket)
	defer rt.Close()
	st, err := rt.Status(ctx)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "weave-cni: the weave router is not running on this node", err.Error())
	}
	if !st.Ready {
		return types.NewError(types.ErrPluginNotAvailable, "weave-cni: the weave router is not ready yet",
			cmp.Or(st.Waiting, "waiting for the router to become ready"))
	}
	return nil
}

// GC releases every allocation of this network whose attachment the runtime no longer has.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	conf, err := ParseNetConf(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel := p.context()
	defer cancel()
	if conf.IPAM.Type != "" {
		if err := p.delegate.GC(ctx, conf.IPAM.Type, args.StdinData); err != nil {
			return delegateError("GC", conf.IPAM.Type, err)
		}
		return nil
	}
	valid := make(map[types.GCAttachment]bool, len(conf.ValidAttachments))
	for _, a := range conf.ValidAttachments {
		valid[a] = true
	}
	rt := p.dial(conf.Socket)
	defer rt.Close()
	allocs, err := rt.IPAMAllocations(ctx)
	if err != nil {
		return routerError("list allocations", conf.Socket, err)
	}
	prefix := allocID(conf.Name, "")
	var errs []error
	for _, a := range allocs {
		cid, ok := strings.CutPrefix(a.ID, prefix)
		if !ok || valid[types.GCAttachment{ContainerID: cid, IfName: a.Iface}] {
			continue
		}
		if _, err := rt.IPAMRelease(ctx, api.IPAMRequest{ID: a.ID, Iface: a.Iface}); err != nil {
			errs = append(errs, fmt.Errorf("release %s/%s: %w", cid, a.Iface, err))
			continue
		}
		p.log.Info("gc released", logx.KeyContainer, cid, logx.KeyDevice, a.Iface, logx.KeyCIDR, a.CIDRs)
	}
	if err := errors.Join(errs...); err != nil {
		return routerError("release stale allocations", conf.Socket, err)
	}
	return nil
}

// parseArgs parses the net conf of an ADD, DEL or CHECK and refuses what the runtime must
// always give.
func parseArgs(args *skel.CmdArgs, needNetns bool) (*NetConf, error) {
	conf, err := ParseNetConf(args.StdinData)
	if err != nil {
		return nil, err
	}
	if err := checkArgs(args, needNetns); err != nil {
		return nil, err
	}
	return conf, nil
}

func checkArgs(args *skel.CmdArgs, needNetns bool) error {
	if args.ContainerID == "" {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "weave-cni: CNI_CONTAINERID is empty", "")
	}
	if !validIfName(args.IfName) {
		return types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("weave-cni: CNI_IFNAME %q is not a valid interface name", args.IfName), "")
	}
	if needNetns && args.Netns == "" {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "weave-cni: CNI_NETNS is empty", "")
	}
	return nil
}

// routerError turns a control API failure into a CNI error an operator can act on.
func routerError(what, socket string, err error) error {
	var te *types.Error
	if errors.As(err, &te) {
		return te
	}
	if errors.Is(err, client.ErrNotRunning) {
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("weave-cni: cannot %s: the weave router is not running on this node (no daemon on %s)", what, socket),
			"start weaver (the weave DaemonSet pod); pods are retried once it runs")
	}
	var ae *api.Error
	if errors.As(err, &ae) {
		code := types.ErrInternal
		switch ae.Code {
		case api.CodeNotReady, api.CodeUnavailable:
			code = types.ErrTryAgainLater
		case api.CodeBadRequest:
			code = types.ErrInvalidNetworkConfig
		}
		return types.NewError(code, fmt.Sprintf("weave-cni: cannot %s: %s", what, ae.Message), "router at "+socket)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("weave-cni: cannot %s: the weave router did not answer in time", what), err.Error())
	}
	return types.NewError(types.ErrInternal, fmt.Sprintf("weave-cni: cannot %s", what), err.Error())
}

func delegateError(verb, plugin string, err error) error {
	var te *types.Error
	if errors.As(err, &te) {
		return te
	}
	return types.NewError(types.ErrInternal, fmt.Sprintf("weave-cni: ipam plugin %q failed on %s", plugin, verb), err.Error())
}

func firstV4(cidrs []string) (netip.Prefix, error) {
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err == nil && p.Addr().Is4() {
			return p, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("no IPv4 address in %v", cidrs)
}

// execDelegate runs delegated IPAM plugins from CNI_PATH.
type execDelegate struct{}

func (execDelegate) Add(ctx context.Context, plugin string, conf []byte) (types.Result, error) {
	return invoke.DelegateAdd(ctx, plugin, conf, nil)
}
func (execDelegate) Check(ctx context.Context, plugin string, conf []byte) error {
	return invoke.DelegateCheck(ctx, plugin, conf, nil)
}
func (execDelegate) Del(ctx context.Context, plugin string, conf []byte) error {
	return invoke.DelegateDel(ctx, plugin, conf, nil)
}
func (execDelegate) GC(ctx context.Context, plugin string, conf []byte) error {
	return invoke.DelegateGC(ctx, plugin, conf, nil)
}
