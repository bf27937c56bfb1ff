package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/weavemesh/weave/internal/netdev"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/weavemesh/weave/api"
	"github.com/weavemesh/weave/api/client"
)

// fakeRouter is an in-memory router: an IPAM handing out 10.32.0.x/12 in order.
type fakeRouter struct {
	mu      sync.Mutex
	down    bool
	ready   bool
	next    int
	allocs  map[[2]string]string
	host    *FakeHost
	exposes int
}

func newFakeRouter(h *FakeHost) *fakeRouter {
	return &fakeRouter{ready: true, next: 2, allocs: map[[2]string]string{}, host: h}
}

func (r *fakeRouter) Close() {}

func (r *fakeRouter) Status(context.Context) (api.Status, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.down {
		return api.Status{}, client.ErrNotRunning
	}
	return api.Status{Ready: r.ready, Waiting: map[bool]string{false: "awaiting IPAM consensus"}[r.ready]}, nil
}

func (r *fakeRouter) alloc(id, iface string) string {
	k := [2]string{id, iface}
	if c, ok := r.allocs[k]; ok {
		return c
	}
	c := fmt.Sprintf("10.32.0.%d/12", r.next)
	r.next++
	r.allocs[k] = c
	return c
}

func (r *fakeRouter) Expose(context.Context, []string) (api.Endpoint, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.exposes++
	c := r.alloc(api.ExposeID, "weave")
	r.host.AddBridgeAddr(netip.MustParsePrefix(c))
	return api.Endpoint{ID: api.ExposeID, CIDRs: []string{c}}, nil
}

func (r *fakeRouter) IPAMAllocate(_ context.Context, req api.IPAMRequest) (api.IPAMResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.down {
		return api.IPAMResponse{}, fmt.Errorf("%w (no daemon on /x)", client.ErrNotRunning)
	}
	return api.IPAMResponse{CIDRs: []string{r.alloc(req.ID, req.Iface)}}, nil
}

func (r *fakeRouter) IPAMRelease(_ context.Context, req api.IPAMRequest) (api.IPAMReleaseResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.down {
		return api.IPAMReleaseResponse{}, client.ErrNotRunning
	}
	k := [2]string{req.ID, req.Iface}
	if _, ok := r.allocs[k]; !ok {
		return api.IPAMReleaseResponse{}, nil
	}
	delete(r.allocs, k)
	return api.IPAMReleaseResponse{Released: 1}, nil
}

func (r *fakeRouter) IPAMAllocations(context.Context) ([]api.Allocation, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []api.Allocation
	for k, c := range r.allocs {
		out = append(out, api.Allocation{ID: k[0], Iface: k[1], CIDRs: []string{c}})
	}
	return out, nil
}

func (r *fakeRouter) held(id, iface string) (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.allocs[[2]string{id, iface}]
	return c, ok
}

type fixture struct {
	host   *FakeHost
	router *fakeRouter
	p      *Plugin
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	h := NewFakeHost("weave", 1376)
	r := newFakeRouter(h)
	return &fixture{host: h, router: r, p: New(Options{Host: h, Dial: func(string) Router { return r }})}
}

func conf(version string, extra string) []byte {
	return []byte(`{"cniVersion":"` + version + `","name":"weave","type":"weave-cni"` + extra + `}`)
}

func args(id, netns, ifname string, stdin []byte) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: id, Netns: netns, IfName: ifname, StdinData: stdin}
}

func cniCode(t *testing.T, err error) uint {
	t.Helper()
	var te *types.Error
	if !errors.As(err, &te) {
		t.Fatalf("error %v (%T) is not a CNI error", err, err)
	}
	if te.Msg == "" || !strings.HasPrefix(te.Msg, "weave-cni: ") {
		t.Errorf("error message %q does not say who is talking", te.Msg)
	}
	return te.Code
}

func TestAddDelWithRouterIPAM(t *testing.T) {
	f := newFixture(t)
	f.host.Netns["/run/netns/c1"] = true
	res, err := f.p.AddResult(args("c1", "/run/netns/c1", "eth0", conf("1.1.0", "")))
	if err != nil {
		t.Fatal(err)
	}
	r := res.(*current.Result)
	if len(r.IPs) != 1 || r.IPs[0].Address.String() != "10.32.0.2/12" || r.IPs[0].Gateway.String() != "10.32.0.3" {
		t.Fatalf("ips %+v: want 10.32.0.2/12 via the exposed 10.32.0.3", r.IPs)
	}
	if len(r.Interfaces) != 2 || r.Interfaces[1].Sandbox != "/run/netns/c1" || *r.IPs[0].Interface != 1 {
		t.Fatalf("interfaces %+v", r.Interfaces)
	}
	if len(r.Routes) != 1 || r.Routes[0].Dst.String() != "0.0.0.0/0" || r.Routes[0].GW.String() != "10.32.0.3" {
		t.Fatalf("routes %+v", r.Routes)
	}
	spec, ok := f.host.Link("/run/netns/c1", "eth0")
	if !ok || spec.MTU != 1376 || !spec.Hairpin || !strings.HasPrefix(spec.HostIfName, "vethwepl") || len(spec.HostIfName) > 15 {
		t.Fatalf("attached %+v", spec)
	}
	if _, ok := f.router.held(allocID("weave", "c1"), "eth0"); !ok {
		t.Fatal("the router does not hold the address under (cni:weave:c1, eth0)")
	}
	// A second interface: its own address and host veth, the same gateway, no second expose.
	res2, err := f.p.AddResult(args("c1", "/run/netns/c1", "net1", conf("1.1.0", `,"mtu":1400,"hairpinMode":false`)))
	if err != nil {
		t.Fatal(err)
	}
	r2 := res2.(*current.Result)
	if r2.IPs[0].Address.String() == r.IPs[0].Address.String() || r2.Interfaces[0].Name == r.Interfaces[0].Name {
		t.Fatalf("second interface shares address or host veth: %+v %+v", r2.IPs, r2.Interfaces)
	}
	if spec, _ := f.host.Link("/run/netns/c1", "net1"); spec.MTU != 1400 || spec.Hairpin {
		t.Fatalf("mtu/hairpin from the conf not applied: %+v", spec)
	}
	if f.router.exposes != 1 {
		t.Fatalf("%d exposes, want 1", f.router.exposes)
	}
	for i := 0; i < 2; i++ {
		if err := f.p.Del(args("c1", "/run/netns/c1", "eth0", conf("1.1.0", ""))); err != nil {
			t.Fatalf("DEL #%d: %v", i+1, err)
		}
	}
	if _, ok := f.router.held(allocID("weave", "c1"), "eth0"); ok {
		t.Fatal("DEL did not release the address")
	}
	if _, ok := f.router.held(allocID("weave", "c1"), "net1"); !ok {
		t.Fatal("DEL of eth0 released net1's address")
	}
	// No netns at all (containerd's second DEL), an unknown container: success.
	if err := f.p.Del(args("c1", "", "net1", conf("1.1.0", ""))); err != nil {
		t.Fatal(err)
	}
	if err := f.p.Del(args("nobody", "/run/netns/gone", "eth0", conf("1.1.0", ""))); err != nil {
		t.Fatal(err)
	}
}

func TestAddResultVersions(t *testing.T) {
	for _, v := range SupportedVersions {
		f := newFixture(t)
		f.host.Netns["/n"] = true
		res, err := f.p.AddResult(args("c", "/n", "eth0", conf(v, "")))
		if err != nil {
			t.Fatalf("%s: %v", v, err)
		}
		if res.Version() != v {
			t.Errorf("asked %s, result is %s", v, res.Version())
		}
	}
}

func TestCheck(t *testing.T) {
	f := newFixture(t)
	f.host.Netns["/n"] = true
	res, err := f.p.AddResult(args("c", "/n", "eth0", conf("1.1.0", "")))
	if err != nil {
		t.Fatal(err)
	}
	prev, _ := json.Marshal(res)
	withPrev := conf("1.1.0", `,"prevResult":`+string(prev))
	if err := f.p.Check(args("c", "/n", "eth0", withPrev)); err != nil {
		t.Fatalf("CHECK after ADD: %v", err)
	}
	if err := f.p.Check(args("c", "/n", "eth0", conf("1.1.0", ""))); cniCode(t, err) != types.ErrInvalidNetworkConfig {
		t.Fatalf("CHECK without prevResult: %v", err)
	}
	// The router lost the address: CHECK says so.
	f.router.IPAMRelease(context.Background(), api.IPAMRequest{ID: allocID("weave", "c"), Iface: "eth0"})
	if err := f.p.Check(args("c", "/n", "eth0", withPrev)); err == nil || !strings.Contains(err.Error(), "no longer holds") {
		t.Fatalf("CHECK with the address released: %v", err)
	}
	// The interface is gone: CHECK says so.
	f.router.IPAMAllocate(context.Background(), api.IPAMRequest{ID: allocID("weave", "c"), Iface: "eth0"})
	f.host.Detach("/n", "eth0", "")
	if err := f.p.Check(args("c", "/n", "eth0", withPrev)); err == nil {
		t.Fatal("CHECK passed with the interface gone")
	}
}

func TestStatus(t *testing.T) {
	f := newFixture(t)
	f.router.down = true
	if err := f.p.Status(args("", "", "", conf("1.1.0", ""))); cniCode(t, err) != types.ErrPluginNotAvailable {
		t.Fatalf("router down: %v", err)
	}
	f.router.down, f.router.ready = false, false
	err := f.p.Status(args("", "", "", conf("1.1.0", "")))
	if cniCode(t, err) != types.ErrPluginNotAvailable || !strings.Contains(err.(*types.Error).Details, "consensus") {
		t.Fatalf("router not ready: %v", err)
	}
	f.router.ready = true
	if err := f.p.Status(args("", "", "", conf("1.1.0", ""))); err != nil {
		t.Fatal(err)
	}
}

func TestGC(t *testing.T) {
	f := newFixture(t)
	for _, id := range []string{"keep", "leak"} {
		f.host.Netns["/"+id] = true
		if _, err := f.p.AddResult(args(id, "/"+id, "eth0", conf("1.1.0", ""))); err != nil {
			t.Fatal(err)
		}
	}
	// Not the plugin's: another network's and weavectl's allocations stay.
	f.router.IPAMAllocate(context.Background(), api.IPAMRequest{ID: allocID("other", "leak"), Iface: "eth0"})
	f.router.IPAMAllocate(context.Background(), api.IPAMRequest{ID: "mycontainer", Iface: "ethwe"})
	gc := conf("1.1.0", `,"cni.dev/valid-attachments":[{"containerID":"keep","ifname":"eth0"}]`)
	if err := f.p.GC(args("", "", "", gc)); err != nil {
		t.Fatal(err)
	}
	for _, k := range [][2]string{{allocID("weave", "keep"), "eth0"}, {allocID("other", "leak"), "eth0"}, {"mycontainer", "ethwe"}, {api.ExposeID, "weave"}} {
		if _, ok := f.router.held(k[0], k[1]); !ok {
			t.Errorf("GC released %v", k)
		}
	}
	if _, ok := f.router.held(allocID("weave", "leak"), "eth0"); ok {
		t.Error("GC kept the leaked allocation")
	}
}

func TestErrors(t *testing.T) {
	f := newFixture(t)
	f.host.Netns["/n"] = true
	cases := []struct {
		name string
		args *skel.CmdArgs
		code uint
	}{
		{"bad json", args("c", "/n", "eth0", []byte(`{`)), types.ErrDecodingFailure},
		{"no name", args("c", "/n", "eth0", []byte(`{"cniVersion":"1.1.0","type":"weave-cni"}`)), types.ErrInvalidNetworkConfig},
		{"bad bridge", args("c", "/n", "eth0", conf("1.1.0", `,"bridge":"a/b"`)), types.ErrInvalidNetworkConfig},
		{"bad mtu", args("c", "/n", "eth0", conf("1.1.0", `,"mtu":10`)), types.ErrInvalidNetworkConfig},
		{"relative socket", args("c", "/n", "eth0", conf("1.1.0", `,"socket":"weave.sock"`)), types.ErrInvalidNetworkConfig},
		{"no netns", args("c", "", "eth0", conf("1.1.0", "")), types.ErrInvalidEnvironmentVariables},
		{"bad ifname", args("c", "/n", "eth0/x", conf("1.1.0", "")), types.ErrInvalidEnvironmentVariables},
		{"missing netns", args("c", "/gone", "eth0", conf("1.1.0", "")), types.ErrInvalidNetNS},
		{"own netns", args("c", "/proc/self/ns/net", "eth0", conf("1.1.0", "")), types.ErrInvalidNetNS},
		{"no bridge", args("c", "/n", "eth0", conf("1.1.0", `,"bridge":"nobridge"`)), types.ErrTryAgainLater},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := f.p.AddResult(c.args)
			if got := cniCode(t, err); got != c.code {
				t.Fatalf("code %d, want %d: %v", got, c.code, err)
			}
		})
	}
	// Router down: try again later, naming the socket; nothing left attached.
	f.router.down = true
	_, err := f.p.AddResult(args("c", "/n", "eth0", conf("1.1.0", `,"socket":"/run/x/weave.sock"`)))
	if cniCode(t, err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), "not running") || !strings.Contains(err.Error(), "/run/x/weave.sock") {
		t.Fatalf("router down: %v", err)
	}
	// Attach fails: the address goes back.
	f.router.down = false
	f.host.FailAttach = errors.New("boom")
	if _, err := f.p.AddResult(args("c", "/n", "eth0", conf("1.1.0", ""))); cniCode(t, err) != types.ErrInternal {
		t.Fatalf("attach failure: %v", err)
	}
	if _, ok := f.router.held(allocID("weave", "c"), "eth0"); ok {
		t.Fatal("failed ADD kept its address")
	}
}

// fakeDelegate is a host-local stand-in.
type fakeDelegate struct{ adds, dels, gcs int }

func (d *fakeDelegate) Add(context.Context, string, []byte) (types.Result, error) {
	d.adds++
	return &current.Result{CNIVersion: "1.1.0", IPs: []*current.IPConfig{{
		Address: *netdev.IPNet(netip.MustParsePrefix("10.40.0.5/24")), Gateway: netip.MustParseAddr("10.40.0.1").AsSlice()}}}, nil
}
func (d *fakeDelegate) Check(context.Context, string, []byte) error { return nil }
func (d *fakeDelegate) Del(context.Context, string, []byte) error   { d.dels++; return nil }
func (d *fakeDelegate) GC(context.Context, string, []byte) error    { d.gcs++; return nil }

func TestDelegatedIPAM(t *testing.T) {
	f := newFixture(t)
	d := &fakeDelegate{}
	f.p.delegate = d
	f.host.Netns["/n"] = true
	c := conf("1.1.0", `,"ipam":{"type":"host-local","subnet":"10.40.0.0/24"}`)
	if _, err := ParseNetConf(c); err == nil {
		t.Fatal("ipam.subnet together with a delegated type was accepted")
	}
	c = conf("1.1.0", `,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.40.0.0/24"}]]}`)
	res, err := f.p.AddResult(args("c", "/n", "eth0", c))
	if err != nil {
		t.Fatal(err)
	}
	r := res.(*current.Result)
	if r.IPs[0].Address.String() != "10.40.0.5/24" || len(r.Routes) != 1 || r.Routes[0].GW.String() != "10.40.0.1" {
		t.Fatalf("delegated result %+v routes %+v", r.IPs, r.Routes)
	}
	if len(f.router.allocs) != 0 || f.router.exposes != 0 {
		t.Fatal("the router's IPAM was used although ipam.type delegates")
	}
	if err := f.p.Del(args("c", "/n", "eth0", c)); err != nil || d.dels != 1 {
		t.Fatalf("DEL: %v, %d delegated", err, d.dels)
	}
	if err := f.p.GC(args("", "", "", c)); err != nil || d.gcs != 1 {
		t.Fatalf("GC: %v, %d delegated", err, d.gcs)
	}
}

func TestParallelAddsExposeOnce(t *testing.T) {
	f := newFixture(t)
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		f.host.Netns[fmt.Sprintf("/n%d", i)] = true
	}
	for i := range 20 {
		ns := fmt.Sprintf("/n%d", i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := f.p.AddResult(args(ns, ns, "eth0", conf("1.1.0", "")))
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if f.router.exposes != 1 {
		t.Fatalf("%d exposes for 20 parallel ADDs on a fresh bridge, want 1", f.router.exposes)
	}
}

func TestHostIfName(t *testing.T) {
	a, b := hostIfName("0123456789abcdef", "eth0"), hostIfName("0123456789abcdef", "eth1")
	if a == b || len(a) != 15 || a != hostIfName("0123456789abcdef", "eth0") {
		t.Fatalf("host names %q %q", a, b)
	}
}

func FuzzParseNetConf(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"weave","type":"weave-cni"}`))
	f.Add([]byte(`{"cniVersion":"0.3.0","name":"weave","type":"weave-cni","bridge":"weave","mtu":1376,"hairpinMode":false,"socket":"/run/weave/weave.sock","ipam":{"subnet":"10.32.0.0/16"}}`))
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"w","type":"weave-cni","ipam":{"type":"host-local"},"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/n"}],"ips":[{"address":"10.32.0.2/12","interface":0}]}}`))
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"weave","type":"weave-cni","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}`))
	f.Add([]byte(`{"cniVersion":"1.1.0","prevResult":{"ips":[{"address":"x"}]}}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseNetConf(data)
		if err != nil {
			var te *types.Error
			if !errors.As(err, &te) || te.Code == 0 || te.Msg == "" {
				t.Fatalf("not a well-formed CNI error: %#v", err)
			}
			return
		}
		if c.Name == "" || c.Bridge == "" || !validIfName(c.Bridge) || c.Socket == "" || (c.MTU != 0 && (c.MTU < 576 || c.MTU > 65535)) {
			t.Fatalf("accepted an invalid conf: %+v", c)
		}
	})
}

// TestAddIntoTakenIfNameDestroysNothing: the container already has an eth0 that weave-cni
// did not make. ADD is refused with a spec error naming the conflict, the address it
// allocated goes back, and the existing eth0 survives the ADD and the runtime's DEL that
// follows a failed ADD (before, ADD's cleanup deleted that eth0 and its veth peer).
func TestAddIntoTakenIfNameDestroysNothing(t *testing.T) {
	f := newFixture(t)
	f.host.Netns["/run/netns/c1"] = true
	f.host.AddForeignLink("/run/netns/c1", "eth0")
	a := args("c1", "/run/netns/c1", "eth0", conf("1.1.0", ""))
	_, err := f.p.AddResult(a)
	if code := cniCode(t, err); code != types.ErrInvalidEnvironmentVariables {
		t.Fatalf("code %d, want %d: %v", code, types.ErrInvalidEnvironmentVariables, err)
	}
	if !strings.Contains(err.Error(), "eth0 exists already in /run/netns/c1") {
		t.Errorf("error does not name the conflict: %v", err)
	}
	if l, ok := f.host.Link("/run/netns/c1", "eth0"); !ok || l.HostIfName != "" {
		t.Fatalf("the foreign eth0 was removed or replaced: %+v %v", l, ok)
	}
	if _, ok := f.router.held(allocID("weave", "c1"), "eth0"); ok {
		t.Fatal("refused ADD kept its address")
	}
	if err := f.p.Del(a); err != nil {
		t.Fatalf("DEL after the refused ADD: %v", err)
	}
	if _, ok := f.host.Link("/run/netns/c1", "eth0"); !ok {
		t.Fatal("DEL after the refused ADD removed the foreign eth0")
	}
	// Another interface name in the same container is fine, and DEL removes only it.
	if _, err := f.p.AddResult(args("c1", "/run/netns/c1", "net1", conf("1.1.0", ""))); err != nil {
		t.Fatalf("ADD net1: %v", err)
	}
	if err := f.p.Del(args("c1", "/run/netns/c1", "net1", conf("1.1.0", ""))); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.host.Link("/run/netns/c1", "net1"); ok {
		t.Fatal("DEL left net1")
	}
	if _, ok := f.host.Link("/run/netns/c1", "eth0"); !ok {
		t.Fatal("DEL of net1 removed the foreign eth0")
	}
}
