package netns

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/netlab"
	"github.com/weavemesh/weave/internal/testutil"
)

// hostState lists what a router may leave behind in a host: links, firewall rules, ipsets
// and state files.
func hostState(t *testing.T, ctx context.Context, h *netlab.Host, r *router) (links, rules, sets string, files []string) {
	t.Helper()
	links = mustRun(t, ctx, h, "sh", "-c", "ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | sort")
	rules = mustRun(t, ctx, h, "sh", "-c", "iptables-save | grep -v '^#' | sed 's/\\[[0-9:]*\\]//' | sort")
	sets = mustRun(t, ctx, h, "sh", "-c", "ipset list -n | sort")
	entries, _ := os.ReadDir(r.stateDir)
	for _, e := range entries {
		files = append(files, e.Name())
	}
	return
}

// TestResetLeavesNothing: a router with a container and an exposed address is reset; the
// host then has exactly the links, rules and sets it had before launch, and no state.
// Then the same after kill -9, where weavectl reset has no daemon to ask.
func TestResetLeavesNothing(t *testing.T) {
	testutil.RequireCommands(t, "iptables-save", "ipset")
	lab := netlab.New(t, netlab.Options{Hosts: 1})
	h := lab.Hosts[0]
	r := newRouter(t, h)
	dumpOnFailure(t, r)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	links0, rules0, sets0, _ := hostState(t, ctx, h, r)

	for round, how := range []string{"running", "killed"} {
		r.launch()
		c, err := h.AddContainer("c" + string(rune('1'+round)))
		if err != nil {
			t.Fatal(err)
		}
		if out, err := r.ctl(ctx, "attach", "10.32.2.1/12", c.Name); err != nil {
			t.Fatalf("attach: %v %s", err, out)
		}
		if out, err := r.ctl(ctx, "expose", "10.32.2.254/12"); err != nil {
			t.Fatalf("expose: %v %s", err, out)
		}
		links1, _, _, files1 := hostState(t, ctx, h, r)
		if links1 == links0 || len(files1) == 0 {
			t.Fatalf("%s: the router left no trace to remove? links:\n%s\nfiles: %v", how, links1, files1)
		}
		if how == "killed" {
			pid := r.pid()
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatalf("kill -9 %d: %v", pid, err)
			}
			testutil.Eventually(t, 10*time.Second, "weaver gone after kill -9", func() error {
				if syscall.Kill(pid, 0) == nil {
					return os.ErrExist
				}
				return nil
			})
		}
		if out, err := r.ctl(ctx, "reset"); err != nil {
			t.Fatalf("%s: reset: %v\n%s", how, err, out)
		}
		links2, rules2, sets2, files2 := hostState(t, ctx, h, r)
		if links2 != links0 {
			t.Errorf("%s: links after reset:\n%s\nwant:\n%s", how, links2, links0)
		}
		if rules2 != rules0 || sets2 != sets0 {
			t.Errorf("%s: firewall after reset differs:\n%s\n%s\nwant:\n%s\n%s", how, rules2, sets2, rules0, sets0)
		}
		if len(files2) != 0 {
			t.Errorf("%s: state files left: %v", how, files2)
		}
		if _, err := os.Stat(r.socket); !os.IsNotExist(err) {
			t.Errorf("%s: socket left: %v", how, err)
		}
		if out := mustRun(t, ctx, c, "ip", "-o", "link"); strings.Contains(out, "ethwe") {
			t.Errorf("%s: container interface left:\n%s", how, out)
		}
	}
}

// TestKill9AndRelaunchRecovers: after kill -9 (stale socket, held bridge) a launch works,
// keeps the identity and the attachments.
func TestKill9AndRelaunchRecovers(t *testing.T) {
	h, r := launchOneHost(t)
	name := r.name
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := h.AddContainer("c1")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := r.ctl(ctx, "attach", "10.32.3.1/12", c.Name); err != nil {
		t.Fatalf("attach: %v %s", err, out)
	}
	pid := r.pid()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "weaver gone", func() error {
		if syscall.Kill(pid, 0) == nil {
			return os.ErrExist
		}
		return nil
	})
	if _, err := os.Stat(r.socket); err != nil {
		t.Fatalf("expected a stale socket after kill -9: %v", err)
	}
	r.launch()
	if r.name != name {
		t.Errorf("identity changed: %s -> %s", name, r.name)
	}
	ps, err := r.ctl(ctx, "ps")
	if err != nil || !strings.Contains(string(ps), c.Name+" ") || !strings.Contains(string(ps), "10.32.3.1/12") {
		t.Errorf("ps after relaunch: %v\n%s", err, ps)
	}
	if out, err := r.ctl(ctx, "attach", c.Name); err != nil || strings.TrimSpace(string(out)) != "10.32.3.1/12" {
		t.Errorf("re-attach after relaunch: %v %q", err, out)
	}
}

// TestStopLaunchResumesAndSIGTERM: a router stopped and launched again without arguments
// comes back with the same identity and its persisted targets, reconnects, and keeps its
// attachments; SIGTERM stops weaver gracefully (exit, socket removed, reason logged).
func TestStopLaunchResumesAndSIGTERM(t *testing.T) {
	lab := netlab.New(t, netlab.Options{Hosts: 2})
	rs := launchAll(t, lab, 2, map[int][]int{1: {0}})
	r := rs[1]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := r.host.AddContainer("c1")
	if err != nil {
		t.Fatal(err)
	}
	out, err := r.ctl(ctx, "attach", c.Name)
	if err != nil {
		t.Fatalf("attach: %v %s", err, out)
	}
	addr := strings.TrimSpace(string(out))
	name := r.name
	if out, err := r.ctl(ctx, "stop"); err != nil {
		t.Fatalf("stop: %v %s", err, out)
	}
	// The container keeps its interface while the router is stopped.
	if out := mustRun(t, ctx, c, "ip", "-o", "addr", "show", "dev", "ethwe"); !strings.Contains(out, addr) {
		t.Errorf("container lost its address while the router was stopped:\n%s", out)
	}
	r.launch() // no peers: the persisted target brings h1 back
	if r.name != name {
		t.Errorf("identity changed: %s -> %s", name, r.name)
	}
	testutil.Eventually(t, 30*time.Second, "relaunched router reconnects to its persisted target", func() error {
		rep := r.report()
		if len(rep.Router.Targets) != 1 || rep.Router.Targets[0] != lab.Hosts[0].PublicAddr.String()+":6783" {
			return fmt.Errorf("targets %v", rep.Router.Targets)
		}
		for _, cn := range rep.Router.Connections {
			if cn.Peer == rs[0].name && cn.State == "established" {
				return nil
			}
		}
		return fmt.Errorf("connections %+v", rep.Router.Connections)
	})
	if out, err := r.ctl(ctx, "attach", c.Name); err != nil || strings.TrimSpace(string(out)) != addr {
		t.Errorf("re-attach after relaunch: %q %v, want %s", out, err, addr)
	}

	// SIGTERM: graceful.
	pid := r.pid()
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 20*time.Second, "weaver exits on SIGTERM", func() error {
		if syscall.Kill(pid, 0) == nil {
			return fmt.Errorf("pid %d still running", pid)
		}
		return nil
	})
	if _, err := os.Stat(r.socket); !os.IsNotExist(err) {
		t.Errorf("socket left after SIGTERM: %v", err)
	}
	if log := r.logTail(); !strings.Contains(log, "signal received, stopping") || !strings.Contains(log, "router stopped") {
		t.Errorf("no graceful stop in the log:\n%s", log)
	}
}
