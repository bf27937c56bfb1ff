package netns

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestAttachDetachExposePs attaches containers (by netns name and by PID) with explicit
// CIDRs, checks that they reach each other and the exposed host over the bridge, that ps and
// re-attach tell the truth, and that detach and hide undo it all.
func TestAttachDetachExposePs(t *testing.T) {
	h, r := launchOneHost(t)
	lab := h.Lab()
	c1, err := h.AddContainer("c1")
	if err != nil {
		t.Fatal(err)
	}
	c2, err := h.AddContainer("c2")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	mustCtl := func(args ...string) string {
		t.Helper()
		out, err := r.ctl(ctx, args...)
		if err != nil {
			t.Fatalf("weavectl %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	if out := mustCtl("attach", "10.32.1.1/12", c1.Name); strings.TrimSpace(out) != "10.32.1.1/12" {
		t.Fatalf("attach printed %q", out)
	}
	// By PID: a process living in c2's namespace.
	sleeper, err := c2.Start("sleeper", nil, "sleep", "300")
	if err != nil {
		t.Fatal(err)
	}
	pid := strconv.Itoa(sleeper.Pid)
	mustCtl("attach", "10.32.1.2/12", pid)

	if out, err := c1.Run(ctx, "ping", "-c", "2", "-W", "2", "10.32.1.2"); err != nil {
		t.Fatalf("container to container over the bridge: %v\n%s", err, out)
	}
	// The container side is ethwe, RA is off, the host side is in hairpin mode.
	if out := mustRun(t, ctx, c1, "cat", "/proc/sys/net/ipv6/conf/ethwe/accept_ra"); strings.TrimSpace(out) != "0" {
		t.Errorf("accept_ra = %q", out)
	}
	if out := mustRun(t, ctx, h, "bridge", "-d", "link", "show"); !strings.Contains(out, "hairpin on") {
		t.Errorf("no hairpin port on the bridge:\n%s", out)
	}

	// Same target again without CIDR: same address.
	if out := mustCtl("attach", c1.Name); strings.TrimSpace(out) != "10.32.1.1/12" {
		t.Errorf("re-attach printed %q, want the same address", out)
	}
	// Expose the host and reach it from a container.
	if out := mustCtl("expose", "10.32.1.254/12"); strings.TrimSpace(out) != "10.32.1.254/12" {
		t.Errorf("expose printed %q", out)
	}
	if out, err := c2.Run(ctx, "ping", "-c", "2", "-W", "2", "10.32.1.254"); err != nil {
		t.Fatalf("container to exposed host: %v\n%s", err, out)
	}
	ps := mustCtl("ps")
	for _, want := range []string{c1.Name + " ", "pid:" + pid + " ", "weave:expose "} {
		if !strings.Contains(ps, want) {
			t.Errorf("ps lacks %q:\n%s", want, ps)
		}
	}
	if n := len(strings.Split(strings.TrimSpace(ps), "\n")); n != 3 {
		t.Errorf("ps has %d lines, want 3:\n%s", n, ps)
	}

	// Detach c1: its interface goes, c2 no longer reaches it; hide the host.
	mustCtl("detach", c1.Name)
	if out := mustRun(t, ctx, c1, "ip", "-o", "link"); strings.Contains(out, "ethwe") {
		t.Errorf("ethwe still in %s after detach:\n%s", c1.Name, out)
	}
	if _, err := c2.Run(ctx, "ping", "-c", "1", "-W", "1", "10.32.1.1"); err == nil {
		t.Error("detached container still answers")
	}
	mustCtl("hide")
	if out := mustRun(t, ctx, h, "ip", "-o", "addr", "show", "dev", "weave"); strings.Contains(out, "10.32.1.254") {
		t.Errorf("address still on the bridge after hide:\n%s", out)
	}
	ps = mustCtl("ps")
	if strings.Contains(ps, c1.Name+" ") || strings.Contains(ps, "weave:expose") {
		t.Errorf("ps after detach and hide:\n%s", ps)
	}
	// Errors are one line and non-zero.
	out, err := r.ctl(ctx, "attach", "10.32.1.9/12", "no-such-netns-"+lab.Prefix)
	if err == nil || !strings.Contains(string(out), "no network namespace") {
		t.Errorf("attach to a missing netns: %v %s", err, out)
	}
	out, err = r.ctl(ctx, "attach", "10.32.0.0/12", c1.Name)
	if err == nil || !strings.Contains(string(out), "network or broadcast") {
		t.Errorf("attach of a network address: %v %s", err, out)
	}
}

type runner interface {
	Run(ctx context.Context, argv ...string) ([]byte, error)
}

func mustRun(t *testing.T, ctx context.Context, r runner, argv ...string) string {
	t.Helper()
	out, err := r.Run(ctx, argv...)
	if err != nil {
		t.Fatalf("%v: %v\n%s", argv, err, out)
	}
	return string(out)
}
