package netns

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/testutil"
)

// TestCLIDetachAddressNotOnTarget: `weavectl detach CIDR TARGET` for an address the target
// never had fails with a one-line reason naming what it has, and leaves the container's
// address, its record and its allocation alone (before, it exited 0 and echoed the CIDR).
func TestCLIDetachAddressNotOnTarget(t *testing.T) {
	testutil.RequireRoot(t)
	h, r := launchOneHost(t)
	c, err := h.AddContainer("c1")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if out, err := r.ctl(ctx, "attach", "10.32.1.1/12", c.Name); err != nil || strings.TrimSpace(string(out)) != "10.32.1.1/12" {
		t.Fatalf("attach: %v\n%s", err, out)
	}
	out, err := r.ctl(ctx, "detach", "10.32.1.9/12", c.Name)
	if err == nil {
		t.Fatalf("detach of an address the container never had succeeded:\n%s", out)
	}
	if !strings.Contains(string(out), "10.32.1.9/12 is not an address of "+c.Name) || !strings.Contains(string(out), "10.32.1.1/12") {
		t.Errorf("detach error does not say what is wrong:\n%s", out)
	}
	if strings.Contains(string(out), "\n10.32.1.9/12\n") || strings.HasPrefix(string(out), "10.32.1.9/12\n") {
		t.Errorf("detach echoed the address it did not remove:\n%s", out)
	}
	if out := mustRun(t, ctx, c, "ip", "-o", "-4", "addr", "show", "dev", "ethwe"); !strings.Contains(out, "10.32.1.1/12") {
		t.Fatalf("the container lost its address:\n%s", out)
	}
	eps := r.report().Endpoints
	if len(eps) != 1 || len(eps[0].CIDRs) != 1 || eps[0].CIDRs[0] != "10.32.1.1/12" {
		t.Fatalf("endpoints after the refused detach: %+v", eps)
	}
}
