package netns

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/netlab"
	"github.com/weavemesh/weave/internal/testutil"
)

// Hostile tests of the daemon's endpoints and launch (issue #12, scenarios 6, 7, 8, 10).

func withPrefix(links, prefix string) []string {
	var out []string
	for _, n := range strings.Fields(links) {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	return out
}

// ethweCIDRs is the IPv4 address of ethwe in a container ("" when it has no ethwe).
func ethweCIDRs(t *testing.T, ctx context.Context, c *netlab.Container) string {
	t.Helper()
	out, err := c.Run(ctx, "ip", "-o", "-4", "addr", "show", "dev", "ethwe")
	if err != nil {
		if strings.Contains(string(out), "does not exist") {
			return ""
		}
		t.Fatalf("addresses of ethwe in %s: %v\n%s", c.Name, err, out)
	}
	var cidrs []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(l)
		for i := range f {
			if f[i] == "inet" && i+1 < len(f) {
				cidrs = append(cidrs, f[i+1])
			}
		}
	}
	sort.Strings(cidrs)
	return strings.Join(cidrs, ",")
}

// endpointsAgree checks that ps, IPAM and the devices tell the same story about the
// containers: each container in ps has exactly its ps addresses on ethwe and in IPAM, each
// one not in ps has no ethwe and no addresses held, the bridge has one veth per endpoint
// and no half-made (wetmp…) device is left anywhere. It returns the ps addresses by container.
func endpointsAgree(t *testing.T, ctx context.Context, r *router, cs []*netlab.Container) map[string]string {
	t.Helper()
	rep := r.report()
	ps := map[string]string{}
	for _, e := range rep.Endpoints {
		c := slices.Clone(e.CIDRs)
		sort.Strings(c)
		ps[e.ID] = strings.Join(c, ",")
	}
	owned := map[string]string{}
	if rep.IPAM != nil {
		for _, a := range rep.IPAM.Owned {
			c := slices.Clone(a.CIDRs)
			sort.Strings(c)
			owned[a.ID] = strings.Join(c, ",")
		}
	}
	for _, c := range cs {
		dev := ethweCIDRs(t, ctx, c)
		if ps[c.Name] != dev || owned[c.Name] != dev {
			t.Errorf("%s: ps says %q, IPAM holds %q, ethwe has %q", c.Name, ps[c.Name], owned[c.Name], dev)
		}
		if tmp := withPrefix(linkNames(t, ctx, c), "wetmp"); len(tmp) > 0 {
			t.Errorf("half-made devices in %s: %v", c.Name, tmp)
		}
	}
	hostLinks := linkNames(t, ctx, r.host)
	if tmp := withPrefix(hostLinks, "wetmp"); len(tmp) > 0 {
		t.Errorf("half-made devices in the host: %v", tmp)
	}
	ports := withPrefix(mustRun(t, ctx, r.host, "sh", "-c",
		"ip -o link show master weave | awk -F': ' '{print $2}' | cut -d@ -f1"), "vethwepl")
	if len(ports) != len(ps) {
		t.Errorf("the bridge has %d container veths %v, ps lists %d endpoints", len(ports), ports, len(ps))
	}
	return ps
}

// attachAll attaches every container in parallel (IPAM addresses) and returns the errors by
// container.
func attachAll(ctx context.Context, r *router, cs []*netlab.Container, onSuccess func()) map[string]error {
	var mu sync.Mutex
	errs := map[string]error{}
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := r.ctl(ctx, "attach", c.Name)
			if err != nil {
				err = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
			} else if onSuccess != nil {
				onSuccess()
			}
			mu.Lock()
			errs[c.Name] = err
			mu.Unlock()
		}()
	}
	wg.Wait()
	return errs
}

// TestHostileKillDuringParallelAttaches: 20 containers are attached in parallel and the
// router is killed with SIGKILL while they run. After a relaunch, ps, IPAM and the devices
// agree (nothing half-made, no address without its interface), every attach that had
// succeeded is still there, and every container can be attached again (scenario 6).
func TestHostileKillDuringParallelAttaches(t *testing.T) {
	h, r := launchOneHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var cs []*netlab.Container
	for i := range 20 {
		c, err := h.AddContainer(fmt.Sprintf("k%d", i))
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	// The ring must be ready, so the attaches race each other and the kill, not consensus.
	if out, err := r.ctl(ctx, "attach", cs[0].Name); err != nil {
		t.Fatalf("first attach: %v\n%s", err, out)
	}
	if out, err := r.ctl(ctx, "detach", cs[0].Name); err != nil {
		t.Fatalf("detach: %v\n%s", err, out)
	}

	// Kill as soon as the first attach succeeds: the others are then in flight.
	pid := r.pid()
	var once sync.Once
	killed := make(chan struct{})
	errs := attachAll(ctx, r, cs, func() {
		once.Do(func() {
			syscall.Kill(pid, syscall.SIGKILL)
			close(killed)
		})
	})
	select {
	case <-killed:
	default:
		t.Fatalf("no attach succeeded before the kill: %v", errs)
	}
	testutil.Eventually(t, 10*time.Second, "weaver gone after kill -9", func() error {
		if syscall.Kill(pid, 0) == nil {
			return fmt.Errorf("pid %d still alive", pid)
		}
		return nil
	})
	failed := 0
	for _, err := range errs {
		if err != nil {
			failed++
		}
	}
	t.Logf("%d of %d attaches failed by the kill", failed, len(cs))

	r.launch()
	t.Logf("after the restart:\n%s", grepLines(r.metrics(), "weave_endpoint_events_total{"))
	ps := endpointsAgree(t, ctx, r, cs)
	for name, err := range errs {
		if err == nil && ps[name] == "" {
			t.Errorf("%s was attached (the reply said so) but is gone after the restart", name)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// Every container attaches again, with unique addresses, and they talk.
	for name, err := range attachAll(ctx, r, cs, nil) {
		if err != nil {
			t.Errorf("attach %s after the restart: %v", name, err)
		}
	}
	ps = endpointsAgree(t, ctx, r, cs)
	seen := map[string]string{}
	for _, c := range cs {
		a := ps[c.Name]
		if a == "" || strings.Contains(a, ",") {
			t.Errorf("%s has addresses %q, want exactly one", c.Name, a)
			continue
		}
		if o, dup := seen[a]; dup {
			t.Errorf("%s and %s share %s", c.Name, o, a)
		}
		seen[a] = c.Name
	}
	if t.Failed() {
		t.FailNow()
	}
	ip, _, _ := strings.Cut(ps[cs[1].Name], "/")
	if out, err := cs[0].Run(ctx, "ping", "-c", "2", "-W", "2", ip); err != nil {
		t.Errorf("container to container after the restart: %v\n%s", err, out)
	}
}

// immutable makes dir refuse new entries and renames, even for root (plain modes do not),
// and undoes it on cleanup so the lab can be removed. The test fails, with the reason,
// where the filesystem has no immutable attribute.
func immutable(t *testing.T, dir string) (undo func()) {
	t.Helper()
	testutil.RequireCommands(t, "chattr")
	undo = func() { _ = exec.Command("chattr", "-i", dir).Run() }
	t.Cleanup(undo)
	if out, err := exec.Command("chattr", "+i", dir).CombinedOutput(); err != nil {
		t.Fatalf("chattr +i %s (the lab dir's filesystem must support it): %v\n%s", dir, err, out)
	}
	// Prove it: root cannot create a file there now.
	probe := filepath.Join(dir, "probe")
	if err := os.WriteFile(probe, nil, 0o600); err == nil {
		os.Remove(probe)
		t.Fatalf("%s still takes new files after chattr +i", dir)
	}
	return undo
}

// TestHostileUnwritableStateDir: with a state dir that takes no new file, attach, re-attach
// with a new address, connect and forget fail, and have changed nothing: no interface or
// address in the container, no address held, no target dialled; after a restart, ps,
// targets and IPAM are what they were before (scenario 7).
func TestHostileUnwritableStateDir(t *testing.T) {
	h, r := launchOneHost(t, "--ipalloc-init", "consensus=1", "10.201.0.77")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c1, err := h.AddContainer("c1")
	if err != nil {
		t.Fatal(err)
	}
	c2, err := h.AddContainer("c2")
	if err != nil {
		t.Fatal(err)
	}
	cs := []*netlab.Container{c1, c2}
	if out, err := r.ctl(ctx, "attach", c1.Name); err != nil {
		t.Fatalf("attach c1: %v\n%s", err, out)
	}
	before := endpointsAgree(t, ctx, r, cs)
	targetsBefore := r.report().Router.Targets

	undo := immutable(t, r.stateDir)
	for _, args := range [][]string{
		{"attach", c2.Name},
		{"attach", "10.32.9.9/12", c2.Name},
		{"attach", "10.32.8.8/12", c1.Name}, // a new address for an attached container
		{"connect", "10.201.0.99"},
		{"connect", "--replace", "10.201.0.98"},
		{"forget", "10.201.0.77"},
		{"detach", c1.Name},
	} {
		out, err := r.ctl(ctx, args...)
		if err == nil {
			t.Errorf("weavectl %v succeeded with an unwritable state dir: %s", args, out)
		}
	}
	rep := r.report()
	if !slices.Equal(rep.Router.Targets, targetsBefore) {
		t.Errorf("targets %v after refused connect/forget, want %v", rep.Router.Targets, targetsBefore)
	}
	for _, cn := range rep.Router.Connections {
		if strings.HasPrefix(cn.Address, "10.201.0.99:") || strings.HasPrefix(cn.Address, "10.201.0.98:") {
			t.Errorf("a refused target is dialled: %+v", cn)
		}
	}
	if got := endpointsAgree(t, ctx, r, cs); !maps.Equal(got, before) {
		t.Errorf("endpoints %v after refused attaches, want %v", got, before)
	}
	if m := r.metrics(); !strings.Contains(m, `weave_endpoint_events_total{event="persist_error"}`) ||
		strings.Contains(m, `weave_endpoint_events_total{event="persist_error"} 0`) {
		t.Errorf("refused changes not counted:\n%s", grepLines(m, "weave_endpoint_events_total"))
	}

	// The state on disk said the same: a restart finds what there was before.
	undo()
	stopCtx, stopCancel := context.WithTimeout(ctx, 30*time.Second)
	defer stopCancel()
	if out, err := r.ctl(stopCtx, "stop"); err != nil {
		t.Fatalf("stop: %v\n%s", err, out)
	}
	r.launch()
	if got := endpointsAgree(t, ctx, r, cs); !maps.Equal(got, before) {
		t.Errorf("endpoints %v after the restart, want %v", got, before)
	}
	if got := r.report().Router.Targets; !slices.Equal(got, targetsBefore) {
		t.Errorf("targets %v after the restart, want %v", got, targetsBefore)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// bridgeAttrs is the MAC and MTU of the bridge "weave" in h.
func bridgeAttrs(t *testing.T, ctx context.Context, h *netlab.Host) (mac string, mtu int) {
	t.Helper()
	var links []struct {
		Address string `json:"address"`
		MTU     int    `json:"mtu"`
	}
	out := mustRun(t, ctx, h, "ip", "-j", "link", "show", "weave")
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		t.Fatalf("ip -j link show weave: %v\n%s", err, out)
	}
	return links[0].Address, links[0].MTU
}

// otherRouter is a second router in h with its own state dir and socket.
func otherRouter(t *testing.T, h *netlab.Host, name string) *router {
	r := newRouter(t, h)
	dir := filepath.Join(h.Lab().Dir, h.Name+"-"+name)
	r.stateDir, r.socket = filepath.Join(dir, "state"), filepath.Join(dir, "weave.sock")
	t.Cleanup(r.kill)
	return r
}

// TestHostileSecondLaunchSameNetns: a second router with another state dir in the namespace
// of a running one is refused and leaves the running router's bridge (MAC, MTU) alone; the
// first router keeps working (scenario 8).
func TestHostileSecondLaunchSameNetns(t *testing.T) {
	lab := netlab.New(t, netlab.Options{Hosts: 1})
	h := lab.Hosts[0]
	r1 := newRouter(t, h)
	r2 := otherRouter(t, h, "second")
	dumpOnFailure(t, r1, r2)
	r1.launch()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	mac0, mtu0 := bridgeAttrs(t, ctx, h)
	start := time.Now()
	out, err := r2.ctl(ctx, "launch", "--nickname", "second", "--mtu", "1300", "--port", "7783", "--metrics-addr", "")
	if err == nil {
		t.Fatalf("second launch in the same namespace succeeded: %s", out)
	}
	if !strings.Contains(string(out), "belongs to another running weaver") {
		t.Errorf("second launch failed without saying why: %s\n%s", out, r2.logTail())
	}
	t.Logf("second launch refused after %v", time.Since(start))
	if mac, mtu := bridgeAttrs(t, ctx, h); mac != mac0 || mtu != mtu0 {
		t.Errorf("running router's bridge changed by a refused launch: mac %s mtu %d, was %s %d", mac, mtu, mac0, mtu0)
	}
	c, err := h.AddContainer("c1")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := r1.ctl(ctx, "attach", "10.32.3.1/12", c.Name); err != nil {
		t.Fatalf("first router after the refused launch: %v\n%s", err, out)
	}
}

// TestHostileRefusedLaunchLeavesNoDevices: launches refused for a bad --ipalloc-init, a bad
// --nickname or a foreign identity (another peer's IPAM database in the state dir) leave
// no bridge, TAP or VXLAN device behind (scenario 8).
func TestHostileRefusedLaunchLeavesNoDevices(t *testing.T) {
	lab := netlab.New(t, netlab.Options{Hosts: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h1, h2 := lab.Hosts[0], lab.Hosts[1]
	// A database of another peer: h1's router runs once and stops.
	r1 := newRouter(t, h1)
	dumpOnFailure(t, r1)
	r1.launch()
	if out, err := r1.ctl(ctx, "stop"); err != nil {
		t.Fatalf("stop: %v\n%s", err, out)
	}
	foreignDB, err := os.ReadFile(filepath.Join(r1.stateDir, "ipam.db"))
	if err != nil {
		t.Fatal(err)
	}

	links0 := linkNames(t, ctx, h2)
	for i, tc := range []struct {
		name  string
		args  []string
		setup func(stateDir string)
		want  string
	}{
		{name: "ipalloc-init", args: []string{"--ipalloc-init", "consensus=zero"}, want: "ipalloc-init"},
		{name: "nickname", args: []string{"--nickname", "bad\x07name"}, want: "nickname"},
		{name: "foreign identity", want: "belongs to peer", setup: func(stateDir string) {
			if err := os.MkdirAll(stateDir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(stateDir, "ipam.db"), foreignDB, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		r := otherRouter(t, h2, fmt.Sprintf("refused%d", i))
		if tc.setup != nil {
			tc.setup(r.stateDir)
		}
		args := append([]string{"launch"}, tc.args...)
		if !slices.Contains(tc.args, "--nickname") {
			args = append(args, "--nickname", "h2")
		}
		out, err := r.ctl(ctx, args...)
		if err == nil {
			t.Errorf("%s: launch succeeded: %s", tc.name, out)
			continue
		}
		if !strings.Contains(string(out)+r.logTail(), tc.want) {
			t.Errorf("%s: launch failed without saying why (%q):\n%s\n%s", tc.name, tc.want, out, r.logTail())
		}
		if links := linkNames(t, ctx, h2); links != links0 {
			t.Errorf("%s: the refused launch left devices:\n%s\nbefore:\n%s", tc.name, links, links0)
		}
	}
}

// TestHostileAttachToFIFO: attach to a path that is not a network namespace (a FIFO would
// block the open forever) fails within seconds with a clear error, and holds no address
// (scenario 10).
func TestHostileAttachToFIFO(t *testing.T) {
	h, r := launchOneHost(t)
	lab := h.Lab()
	fifo := filepath.Join(lab.Dir, "not-a-netns")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(lab.Dir, "plain-file")
	if err := os.WriteFile(plain, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{fifo, plain, "/proc/self/ns/mnt"} {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		start := time.Now()
		out, err := r.ctl(ctx, "attach", target)
		took := time.Since(start)
		cancel()
		if err == nil {
			t.Errorf("attach %s succeeded: %s", target, out)
		} else if !strings.Contains(string(out), "not a network namespace") {
			t.Errorf("attach %s: unclear error: %s", target, out)
		}
		if took > 5*time.Second {
			t.Errorf("attach %s took %v", target, took)
		}
	}
	rep := r.report()
	if rep.IPAM != nil && len(rep.IPAM.Owned) != 0 {
		t.Errorf("addresses held after refused attaches: %+v", rep.IPAM.Owned)
	}
	if len(rep.Endpoints) != 0 {
		t.Errorf("ps after refused attaches: %+v", rep.Endpoints)
	}
	if m := r.metrics(); !strings.Contains(m, `weave_endpoint_events_total{event="refused_target"} 3`) {
		t.Errorf("refused targets not counted:\n%s", grepLines(m, "weave_endpoint_events_total"))
	}
}
