package netns

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/weavemesh/weave/api"
	"github.com/weavemesh/weave/api/client"
	"github.com/weavemesh/weave/internal/netlab"
	"github.com/weavemesh/weave/internal/testutil"
)

// cniEnv runs CNI plugins through libcni, in-process, as a runtime would, with the plugins
// executing in a lab host's namespace: each plugin in the temp bin dir is a wrapper that
// enters the host's namespace and execs the real binary.
type cniEnv struct {
	t      testing.TB
	host   *netlab.Host
	r      *router
	binDir string
	cfg    *libcni.CNIConfig
}

func newCNIEnv(t testing.TB, h *netlab.Host, r *router) *cniEnv {
	t.Helper()
	testutil.RequireCommands(t, "nsenter")
	e := &cniEnv{t: t, host: h, r: r, binDir: t.TempDir()}
	e.wrap("weave-cni", testutil.Binary(t, "weave-cni"))
	for _, ref := range []string{"bridge", "host-local", "portmap"} {
		if p := filepath.Join("/usr/lib/cni", ref); fileExists(p) {
			e.wrap(ref, p)
		}
	}
	e.cfg = e.newConfig()
	return e
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func (e *cniEnv) wrap(name, target string) {
	script := fmt.Sprintf("#!/bin/sh\nexec nsenter --net=/run/netns/%s %s \"$@\"\n", e.host.Name, target)
	if err := os.WriteFile(filepath.Join(e.binDir, name), []byte(script), 0o755); err != nil {
		e.t.Fatal(err)
	}
}

// newConfig returns a runtime with a cache of its own (a fresh cache has no prevResult).
func (e *cniEnv) newConfig() *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir([]string{e.binDir}, e.t.TempDir(), nil)
}

// weaveList is the conflist of the weave network; extra is added to the plugin's conf.
func (e *cniEnv) weaveList(version, extra string) *libcni.NetworkConfigList {
	e.t.Helper()
	conf := fmt.Sprintf(`{"cniVersion":%q,"name":"weave","plugins":[{"type":"weave-cni","socket":%q%s}]}`,
		version, e.r.socket, extra)
	return listFromBytes(e.t, conf)
}

func listFromBytes(t testing.TB, b string) *libcni.NetworkConfigList {
	t.Helper()
	l, err := libcni.ConfListFromBytes([]byte(b))
	if err != nil {
		t.Fatalf("conflist: %v\n%s", err, b)
	}
	return l
}

func rtConf(id string, c *netlab.Container, ifName string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: id, NetNS: "/run/netns/" + c.Name, IfName: ifName}
}

func (e *cniEnv) allocations() []api.Allocation {
	e.t.Helper()
	c := client.New(e.r.socket)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, err := c.IPAMAllocations(ctx)
	if err != nil {
		e.t.Fatalf("allocations: %v", err)
	}
	return a
}

func (e *cniEnv) holds(containerID, ifName string) bool {
	for _, a := range e.allocations() {
		if strings.HasSuffix(a.ID, ":"+containerID) && a.Iface == ifName {
			return true
		}
	}
	return false
}

// validResult checks a 1.1.0 result the way the spec states it: interfaces named, the
// container's with its sandbox and a MAC, every IP pointing at a listed interface, the routes
// through a gateway in the pod's network.
func validResult(t *testing.T, res types.Result, netnsPath, ifName string, wantDefault bool) *current.Result {
	t.Helper()
	if res.Version() != "1.1.0" {
		t.Fatalf("result version %s, want 1.1.0", res.Version())
	}
	raw, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	// Round trip through the wire form, as a runtime reads it.
	back, err := current.NewResult(raw)
	if err != nil {
		t.Fatalf("result does not decode: %v\n%s", err, raw)
	}
	r := back.(*current.Result)
	var sandboxIdx = -1
	for i, itf := range r.Interfaces {
		if itf.Name == "" {
			t.Errorf("interface %d has no name: %s", i, raw)
		}
		if itf.Sandbox == netnsPath && itf.Name == ifName {
			sandboxIdx = i
			if _, err := parseMAC(itf.Mac); err != nil {
				t.Errorf("container interface mac %q: %v", itf.Mac, err)
			}
		}
	}
	if sandboxIdx < 0 {
		t.Fatalf("no interface %s in sandbox %s: %s", ifName, netnsPath, raw)
	}
	if len(r.IPs) != 1 || r.IPs[0].Interface == nil || *r.IPs[0].Interface != sandboxIdx {
		t.Fatalf("ips must reference the container interface %d: %s", sandboxIdx, raw)
	}
	if r.IPs[0].Gateway == nil || !r.IPs[0].Address.Contains(r.IPs[0].Gateway) {
		t.Fatalf("gateway %v not in %v: %s", r.IPs[0].Gateway, r.IPs[0].Address.String(), raw)
	}
	if slices.ContainsFunc(r.Routes, func(rt *types.Route) bool {
		return rt.Dst.String() == "0.0.0.0/0" && rt.GW.Equal(r.IPs[0].Gateway)
	}) != wantDefault {
		t.Fatalf("default route via the gateway: want %v: %s", wantDefault, raw)
	}
	return r
}

func parseMAC(s string) ([]byte, error) {
	var b [6]byte
	n, err := fmt.Sscanf(s, "%02x:%02x:%02x:%02x:%02x:%02x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5])
	if err != nil || n != 6 {
		return nil, fmt.Errorf("not a MAC: %q", s)
	}
	return b[:], nil
}

func ipOf(r *current.Result) netip.Prefix {
	p, _ := netip.ParsePrefix(r.IPs[0].Address.String())
	return p
}

func cniErr(t *testing.T, err error, code uint) *types.Error {
	t.Helper()
	var te *types.Error
	if !errors.As(err, &te) {
		t.Fatalf("want CNI error %d, got %v (%T)", code, err, err)
	}
	if te.Code != code || te.Msg == "" {
		t.Fatalf("want CNI error %d with a message, got %+v", code, te)
	}
	return te
}

// TestCNIConformance drives weave-cni through libcni against a running router: VERSION,
// ADD (result valid, plumbing real, traffic flows), a second interface, CHECK, DEL twice,
// DEL without netns or prevResult, well-formed errors, GC, STATUS with the router stopped.
func TestCNIConformance(t *testing.T) {
	testutil.RequireRoot(t)
	h, r := launchOneHost(t)
	e := newCNIEnv(t, h, r)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	list := e.weaveList("1.1.0", "")

	t.Run("VERSION", func(t *testing.T) {
		info, err := e.cfg.GetVersionInfo(ctx, "weave-cni")
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
			if !slices.Contains(info.SupportedVersions(), v) {
				t.Errorf("VERSION lacks %s: %v", v, info.SupportedVersions())
			}
		}
		if _, err := e.cfg.ValidateNetworkList(ctx, list); err != nil {
			t.Errorf("validate: %v", err)
		}
	})

	c1, err := h.AddContainer("c1")
	if err != nil {
		t.Fatal(err)
	}
	c2, err := h.AddContainer("c2")
	if err != nil {
		t.Fatal(err)
	}
	var r1, r2 *current.Result
	t.Run("ADD", func(t *testing.T) {
		res, err := e.cfg.AddNetworkList(ctx, list, rtConf("ctr1", c1, "eth0"))
		if err != nil {
			t.Fatal(err)
		}
		r1 = validResult(t, res, "/run/netns/"+c1.Name, "eth0", true)
		if !netip.MustParsePrefix("10.32.0.0/12").Contains(ipOf(r1).Addr()) {
			t.Fatalf("address %v outside the router's range", ipOf(r1))
		}
		res, err = e.cfg.AddNetworkList(ctx, list, rtConf("ctr2", c2, "eth0"))
		if err != nil {
			t.Fatal(err)
		}
		r2 = validResult(t, res, "/run/netns/"+c2.Name, "eth0", true)
		// The plumbing is real: container to container and to the gateway (the bridge).
		if out, err := c1.Run(ctx, "ping", "-c", "1", "-W", "2", ipOf(r2).Addr().String()); err != nil {
			t.Fatalf("pod to pod: %v\n%s", err, out)
		}
		if out, err := c2.Run(ctx, "ping", "-c", "1", "-W", "2", r2.IPs[0].Gateway.String()); err != nil {
			t.Fatalf("pod to gateway: %v\n%s", err, out)
		}
		out := mustRun(t, ctx, c1, "ip", "-d", "link", "show", "eth0")
		if !strings.Contains(out, "mtu "+fmt.Sprint(r.report().Bridge.MTU)) {
			t.Errorf("container mtu is not the router's %d:\n%s", r.report().Bridge.MTU, out)
		}
		if out := mustRun(t, ctx, h, "bridge", "-d", "link", "show", "dev", r1.Interfaces[0].Name); !strings.Contains(out, "hairpin on") || !strings.Contains(out, "master weave") {
			t.Errorf("host end not a hairpin port of weave:\n%s", out)
		}
		if !e.holds("ctr1", "eth0") {
			t.Errorf("router does not hold ctr1/eth0: %+v", e.allocations())
		}
	})
	if r1 == nil {
		t.FailNow()
	}

	t.Run("ADD second interface", func(t *testing.T) {
		res, err := e.cfg.AddNetworkList(ctx, list, rtConf("ctr1", c1, "net1"))
		if err != nil {
			t.Fatal(err)
		}
		// The pod's default route stays on its first interface.
		rr := validResult(t, res, "/run/netns/"+c1.Name, "net1", false)
		if out := mustRun(t, ctx, c1, "ip", "route", "show", "default"); !strings.Contains(out, "dev eth0") || strings.Contains(out, "net1") {
			t.Errorf("second interface took the default route:\n%s", out)
		}
		if err := e.cfg.CheckNetworkList(ctx, list, rtConf("ctr1", c1, "net1")); err != nil {
			t.Errorf("CHECK of the second interface: %v", err)
		}
		if ipOf(rr) == ipOf(r1) || rr.Interfaces[0].Name == r1.Interfaces[0].Name {
			t.Fatalf("second interface shares address or host end: %v %v", rr.IPs, rr.Interfaces)
		}
		out := mustRun(t, ctx, c1, "ip", "-4", "addr")
		for _, want := range []string{ipOf(r1).String(), ipOf(rr).String()} {
			if !strings.Contains(out, want) {
				t.Errorf("container lacks %s:\n%s", want, out)
			}
		}
		if err := e.cfg.DelNetworkList(ctx, list, rtConf("ctr1", c1, "net1")); err != nil {
			t.Fatal(err)
		}
		if e.holds("ctr1", "net1") || !e.holds("ctr1", "eth0") {
			t.Fatalf("DEL of net1 must free net1 only: %+v", e.allocations())
		}
	})

	t.Run("CHECK", func(t *testing.T) {
		if err := e.cfg.CheckNetworkList(ctx, list, rtConf("ctr1", c1, "eth0")); err != nil {
			t.Fatalf("CHECK after ADD: %v", err)
		}
		// Break what ADD made: CHECK must notice.
		mustRun(t, ctx, c2, "ip", "route", "del", "default")
		err := e.cfg.CheckNetworkList(ctx, list, rtConf("ctr2", c2, "eth0"))
		if te := cniErr(t, err, types.ErrInternal); !strings.Contains(te.Details, "route") {
			t.Fatalf("CHECK with the default route gone: %+v", te)
		}
	})

	t.Run("DEL", func(t *testing.T) {
		for i := range 2 {
			if err := e.cfg.DelNetworkList(ctx, list, rtConf("ctr1", c1, "eth0")); err != nil {
				t.Fatalf("DEL #%d: %v", i+1, err)
			}
		}
		if e.holds("ctr1", "eth0") {
			t.Fatal("DEL did not release the address")
		}
		if out, err := c1.Run(ctx, "ip", "link", "show", "eth0"); err == nil {
			t.Fatalf("eth0 still in the container:\n%s", out)
		}
		// The namespace is gone before DEL (a crashed sandbox): DEL still frees the address.
		if out, err := exec.CommandContext(ctx, "ip", "netns", "del", c2.Name).CombinedOutput(); err != nil {
			t.Fatalf("delete netns: %v\n%s", err, out)
		}
		if err := e.cfg.DelNetworkList(ctx, list, rtConf("ctr2", c2, "eth0")); err != nil {
			t.Fatalf("DEL with the netns gone: %v", err)
		}
		if e.holds("ctr2", "eth0") {
			t.Fatal("DEL with the netns gone kept the address")
		}
		// No netns path at all (containerd's second DEL) and no cached prevResult: success.
		if err := e.newConfig().DelNetworkList(ctx, list, &libcni.RuntimeConf{ContainerID: "ctr2", IfName: "eth0"}); err != nil {
			t.Fatalf("DEL without netns: %v", err)
		}
		c3, err := h.AddContainer("c3")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.cfg.AddNetworkList(ctx, list, rtConf("ctr3", c3, "eth0")); err != nil {
			t.Fatal(err)
		}
		if err := e.newConfig().DelNetworkList(ctx, list, rtConf("ctr3", c3, "eth0")); err != nil {
			t.Fatalf("DEL without prevResult: %v", err)
		}
		if e.holds("ctr3", "eth0") {
			t.Fatal("DEL without prevResult kept the address")
		}
		if out, err := c3.Run(ctx, "ip", "link", "show", "eth0"); err == nil {
			t.Fatalf("eth0 still in the container:\n%s", out)
		}
	})

	t.Run("errors", func(t *testing.T) {
		c4, err := h.AddContainer("c4")
		if err != nil {
			t.Fatal(err)
		}
		_, err = e.cfg.AddNetworkList(ctx, e.weaveList("1.1.0", `,"mtu":10`), rtConf("ctr4", c4, "eth0"))
		if te := cniErr(t, err, types.ErrInvalidNetworkConfig); !strings.Contains(te.Details, "mtu") {
			t.Errorf("bad mtu error does not name the field: %+v", te)
		}
		_, err = e.cfg.AddNetworkList(ctx, e.weaveList("1.1.0", `,"bridge":"nosuchbr"`), rtConf("ctr4", c4, "eth0"))
		if te := cniErr(t, err, types.ErrTryAgainLater); !strings.Contains(te.Msg, "nosuchbr") {
			t.Errorf("missing bridge error does not name it: %+v", te)
		}
		_, err = e.cfg.AddNetworkList(ctx, e.weaveList("1.1.0", ""), &libcni.RuntimeConf{ContainerID: "ctr4", NetNS: "/run/netns/nope", IfName: "eth0"})
		cniErr(t, err, types.ErrInvalidNetNS)
		_, err = e.cfg.AddNetworkList(ctx, e.weaveList("0.2.0", ""), rtConf("ctr4", c4, "eth0"))
		cniErr(t, err, types.ErrIncompatibleCNIVersion)
		if n := len(e.allocations()); n != 1 { // the gateway's
			t.Errorf("failed ADDs left allocations: %+v", e.allocations())
		}
	})

	t.Run("GC", func(t *testing.T) {
		var cs []*netlab.Container
		for _, n := range []string{"gkeep", "gleak"} {
			c, err := h.AddContainer(n)
			if err != nil {
				t.Fatal(err)
			}
			cs = append(cs, c)
		}
		if _, err := e.cfg.AddNetworkList(ctx, list, rtConf("keep", cs[0], "eth0")); err != nil {
			t.Fatal(err)
		}
		// Leaked: the runtime lost track of it (another cache), the router still holds it.
		if _, err := e.newConfig().AddNetworkList(ctx, list, rtConf("leak", cs[1], "eth0")); err != nil {
			t.Fatal(err)
		}
		// weavectl's own attachments are not the plugin's to collect.
		wc, err := h.AddContainer("wctl")
		if err != nil {
			t.Fatal(err)
		}
		if out, err := r.ctl(ctx, "attach", wc.Name); err != nil {
			t.Fatalf("weavectl attach: %v\n%s", err, out)
		}
		before := len(e.allocations())
		err = e.cfg.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: "keep", IfName: "eth0"}}})
		if err != nil {
			t.Fatal(err)
		}
		if !e.holds("keep", "eth0") || e.holds("leak", "eth0") {
			t.Fatalf("GC must keep keep/eth0 and free leak/eth0: %+v", e.allocations())
		}
		if after := len(e.allocations()); after != before-1 {
			t.Fatalf("GC freed %d allocations, want 1: %+v", before-after, e.allocations())
		}
	})

	t.Run("older versions", func(t *testing.T) {
		for i, v := range []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0"} {
			c, err := h.AddContainer(fmt.Sprintf("v%d", i))
			if err != nil {
				t.Fatal(err)
			}
			l := e.weaveList(v, "")
			rc := rtConf("ver"+v, c, "eth0")
			res, err := e.cfg.AddNetworkList(ctx, l, rc)
			if err != nil {
				t.Fatalf("%s: %v", v, err)
			}
			if res.Version() != v {
				t.Errorf("asked for %s, got a %s result", v, res.Version())
			}
			if v == "0.4.0" || v == "1.0.0" {
				if err := e.cfg.CheckNetworkList(ctx, l, rc); err != nil {
					t.Errorf("CHECK at %s: %v", v, err)
				}
			}
			if err := e.cfg.DelNetworkList(ctx, l, rc); err != nil {
				t.Fatalf("DEL at %s: %v", v, err)
			}
			if e.holds("ver"+v, "eth0") {
				t.Errorf("DEL at %s kept the address", v)
			}
		}
	})

	t.Run("delegated IPAM", func(t *testing.T) {
		if !fileExists(filepath.Join(e.binDir, "host-local")) {
			t.Fatal("host-local missing: run scripts/install-deps.sh (containernetworking-plugins)")
		}
		c, err := h.AddContainer("dlg")
		if err != nil {
			t.Fatal(err)
		}
		dataDir := t.TempDir()
		l := e.weaveList("1.0.0", fmt.Sprintf(`,"ipam":{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":"10.47.0.0/24"}]]}`, dataDir))
		before := len(e.allocations())
		res, err := e.cfg.AddNetworkList(ctx, l, rtConf("dlg", c, "eth0"))
		if err != nil {
			t.Fatal(err)
		}
		cr, _ := current.NewResultFromResult(res)
		if len(cr.IPs) != 1 || !netip.MustParsePrefix("10.47.0.0/24").Contains(ipOf(cr).Addr()) {
			t.Fatalf("delegated ADD gave %v", cr.IPs)
		}
		if out := mustRun(t, ctx, c, "ip", "-4", "addr", "show", "eth0"); !strings.Contains(out, ipOf(cr).String()) {
			t.Fatalf("container lacks %s:\n%s", ipOf(cr), out)
		}
		if after := len(e.allocations()); after != before {
			t.Errorf("the router's IPAM was used (%d -> %d allocations)", before, after)
		}
		lease := filepath.Join(dataDir, "weave", ipOf(cr).Addr().String())
		if !fileExists(lease) {
			t.Fatalf("host-local has no lease %s", lease)
		}
		if err := e.cfg.DelNetworkList(ctx, l, rtConf("dlg", c, "eth0")); err != nil {
			t.Fatal(err)
		}
		if fileExists(lease) {
			t.Fatal("DEL did not release host-local's lease")
		}
	})

	t.Run("STATUS", func(t *testing.T) {
		if err := e.cfg.GetStatusNetworkList(ctx, list); err != nil {
			t.Fatalf("STATUS with the router running: %v", err)
		}
		if out, err := r.ctl(ctx, "stop"); err != nil {
			t.Fatalf("stop: %v\n%s", err, out)
		}
		err := e.cfg.GetStatusNetworkList(ctx, list)
		if te := cniErr(t, err, types.ErrPluginNotAvailable); !strings.Contains(te.Msg, "not running") {
			t.Errorf("STATUS message: %+v", te)
		}
		// ADD while the router is down: try again later, with the reason.
		c5, err := h.AddContainer("c5")
		if err != nil {
			t.Fatal(err)
		}
		_, err = e.cfg.AddNetworkList(ctx, list, rtConf("ctr5", c5, "eth0"))
		if te := cniErr(t, err, types.ErrTryAgainLater); !strings.Contains(te.Msg, "not running") {
			t.Errorf("ADD with the router down: %+v", te)
		}
		r.launch()
		testutil.Eventually(t, 30*time.Second, "STATUS succeeds once the router runs", func() error {
			return e.cfg.GetStatusNetworkList(ctx, list)
		})
	})
}

// TestCNIParallelAdds gives 50 pods addresses at once: all succeed, all unique, the bridge
// gets a single gateway.
func TestCNIParallelAdds(t *testing.T) {
	testutil.RequireRoot(t)
	h, r := launchOneHost(t)
	e := newCNIEnv(t, h, r)
	list := e.weaveList("1.1.0", "")
	const n = 50
	cs := make([]*netlab.Container, n)
	for i := range cs {
		c, err := h.AddContainer(fmt.Sprintf("p%d", i))
		if err != nil {
			t.Fatal(err)
		}
		cs[i] = c
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	start := time.Now()
	addrs := make([]netip.Prefix, n)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := e.cfg.AddNetworkList(ctx, list, rtConf(fmt.Sprintf("par%d", i), cs[i], "eth0"))
			if err != nil {
				errs[i] = err
				return
			}
			cr, err := current.NewResultFromResult(res)
			if err != nil {
				errs[i] = err
				return
			}
			addrs[i], _ = netip.ParsePrefix(cr.IPs[0].Address.String())
		}()
	}
	wg.Wait()
	t.Logf("%d parallel ADDs in %v", n, time.Since(start).Round(time.Millisecond))
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	seen := map[netip.Addr]int{}
	for i, a := range addrs {
		if j, dup := seen[a.Addr()]; dup {
			t.Fatalf("pods %d and %d both got %v", i, j, a)
		}
		seen[a.Addr()] = i
	}
	out := mustRun(t, ctx, h, "ip", "-4", "-o", "addr", "show", "dev", "weave")
	if got := strings.Count(out, "inet "); got != 1 {
		t.Fatalf("bridge has %d addresses, want one gateway:\n%s", got, out)
	}
	if _, dup := seen[netip.MustParsePrefix(strings.Fields(out)[3]).Addr()]; dup {
		t.Fatalf("a pod got the gateway's address:\n%s", out)
	}
	// A pod reaches another across the bridge.
	if out, err := cs[0].Run(ctx, "ping", "-c", "1", "-W", "2", addrs[n-1].Addr().String()); err != nil {
		t.Fatalf("pod to pod: %v\n%s", err, out)
	}
}

// BenchmarkCNILatency measures ADD and DEL of weave-cni next to the reference bridge +
// host-local plugins, in the same host namespace, and reports p50/p99 of each in ms (ns/op
// is one ADD and DEL of both). A figure, not a check: run it by hand, e.g.
// go test -run '^$' -bench CNILatency -benchtime 30x ./tests/netns/
func BenchmarkCNILatency(b *testing.B) {
	testutil.RequireRoot(b)
	if !fileExists("/usr/lib/cni/bridge") {
		b.Fatal("reference plugins missing: run scripts/install-deps.sh (containernetworking-plugins)")
	}
	lab := netlab.New(b, netlab.Options{Hosts: 1})
	h := lab.Hosts[0]
	r := newRouter(b, h)
	b.Cleanup(func() {
		if b.Failed() {
			b.Log(r.logTail())
		}
	})
	r.launch()
	e := newCNIEnv(b, h, r)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// ADD and DEL alternate, so one container serves every round.
	c, err := h.AddContainer("lat")
	if err != nil {
		b.Fatal(err)
	}
	ref := listFromBytes(b, fmt.Sprintf(`{"cniVersion":"1.0.0","name":"ref","plugins":[{"type":"bridge","bridge":"cniref0",
		"isGateway":true,"ipam":{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":"10.99.0.0/24"}]],
		"routes":[{"dst":"0.0.0.0/0"}]}}]}`, b.TempDir()))
	lists := []struct {
		name string
		list *libcni.NetworkConfigList
	}{{"weave-cni", e.weaveList("1.1.0", "")}, {"ref", ref}}
	// One warm-up ADD/DEL each (the gateway is exposed, the reference bridge created).
	for _, l := range lists {
		if _, err := e.cfg.AddNetworkList(ctx, l.list, rtConf("warm", c, "eth0")); err != nil {
			b.Fatalf("%s warm-up: %v", l.name, err)
		}
		if err := e.cfg.DelNetworkList(ctx, l.list, rtConf("warm", c, "eth0")); err != nil {
			b.Fatalf("%s warm-up DEL: %v", l.name, err)
		}
	}
	type lat struct{ add, del []time.Duration }
	got := map[string]*lat{}
	for _, l := range lists {
		got[l.name] = &lat{}
	}
	// Interleaved, so both see the same machine load.
	i := 0
	for b.Loop() {
		for _, l := range lists {
			rc := rtConf(fmt.Sprintf("lat%d", i), c, "eth0")
			t0 := time.Now()
			if _, err := e.cfg.AddNetworkList(ctx, l.list, rc); err != nil {
				b.Fatalf("%s ADD: %v", l.name, err)
			}
			t1 := time.Now()
			if err := e.cfg.DelNetworkList(ctx, l.list, rc); err != nil {
				b.Fatalf("%s DEL: %v", l.name, err)
			}
			got[l.name].add = append(got[l.name].add, t1.Sub(t0))
			got[l.name].del = append(got[l.name].del, time.Since(t1))
		}
		i++
	}
	for _, l := range lists {
		g := got[l.name]
		b.ReportMetric(ms(pct(g.add, 50)), l.name+"-add-p50-ms")
		b.ReportMetric(ms(pct(g.add, 99)), l.name+"-add-p99-ms")
		b.ReportMetric(ms(pct(g.del, 50)), l.name+"-del-p50-ms")
		b.ReportMetric(ms(pct(g.del, 99)), l.name+"-del-p99-ms")
	}
	b.Logf("ref is the bridge + host-local plugins; both run through the nsenter wrapper")
}

func pct(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(0, min(len(s)-1, i-1))]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
