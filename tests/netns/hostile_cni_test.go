package netns

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/weavemesh/weave/internal/testutil"
)

// TestCNIAddIntoTakenIfName: the container already has an eth0 (a veth whose peer is on
// the host, as another plugin or the runtime would leave it). weave-cni's ADD is refused
// with a spec error naming the conflict; the eth0, its peer, its address stay as they were;
// the address ADD allocated goes back; nothing of weave's is left; the runtime's DEL after
// the failed ADD removes nothing either. Before, ADD's cleanup deleted eth0 and its peer.
func TestCNIAddIntoTakenIfName(t *testing.T) {
	testutil.RequireRoot(t)
	h, r := launchOneHost(t)
	e := newCNIEnv(t, h, r)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	list := e.weaveList("1.1.0", "")

	c, err := h.AddContainer("taken")
	if err != nil {
		t.Fatal(err)
	}
	// The foreign pair: "otherpeer" on the host, "eth0" in the container, with an address.
	mustRun(t, ctx, h, "ip", "link", "add", "otherpeer", "type", "veth", "peer", "name", "eth0", "netns", c.Name)
	mustRun(t, ctx, c, "ip", "addr", "add", "192.168.77.2/24", "dev", "eth0")
	mustRun(t, ctx, c, "ip", "link", "set", "eth0", "up")
	before := mustRun(t, ctx, c, "ip", "-o", "link", "show", "eth0")
	foreignIntact := func(when string) {
		t.Helper()
		out, err := c.Run(ctx, "ip", "-o", "link", "show", "eth0")
		if err != nil || !strings.Contains(string(out), "eth0@") {
			t.Fatalf("%s: the container's own eth0 is gone: %v\n%s", when, err, out)
		}
		if fieldsOf(string(out), "link/ether") != fieldsOf(before, "link/ether") {
			t.Fatalf("%s: eth0 was replaced:\nbefore %s\nafter  %s", when, before, out)
		}
		if out := mustRun(t, ctx, c, "ip", "-o", "-4", "addr", "show", "dev", "eth0"); !strings.Contains(out, "192.168.77.2/24") || strings.Contains(out, "10.3") {
			t.Fatalf("%s: eth0's addresses changed:\n%s", when, out)
		}
		if out, err := h.Run(ctx, "ip", "link", "show", "otherpeer"); err != nil {
			t.Fatalf("%s: eth0's veth peer on the host is gone: %v\n%s", when, err, out)
		}
		if out := mustRun(t, ctx, h, "ip", "-o", "link", "show"); strings.Contains(out, "vethwepl") {
			t.Fatalf("%s: a weave veth was left on the host:\n%s", when, out)
		}
		if e.holds("ctr-taken", "eth0") {
			t.Fatalf("%s: the router still holds an address for the refused ADD: %+v", when, e.allocations())
		}
	}

	_, err = e.cfg.AddNetworkList(ctx, list, rtConf("ctr-taken", c, "eth0"))
	if err == nil {
		t.Fatal("ADD into a container whose eth0 is taken succeeded")
	}
	foreignIntact("after ADD")
	te := cniErr(t, err, types.ErrInvalidEnvironmentVariables)
	if !strings.Contains(te.Msg, "eth0 exists already in /run/netns/"+c.Name) {
		t.Errorf("error does not name the conflict: %+v", te)
	}
	// A runtime follows a failed ADD with DEL.
	if err := e.cfg.DelNetworkList(ctx, list, rtConf("ctr-taken", c, "eth0")); err != nil {
		t.Fatalf("DEL after the refused ADD: %v", err)
	}
	foreignIntact("after DEL")

	// The same container on another interface name works, and its DEL leaves eth0 alone.
	res, err := e.cfg.AddNetworkList(ctx, list, rtConf("ctr-taken", c, "net1"))
	if err != nil {
		t.Fatalf("ADD net1 beside the foreign eth0: %v", err)
	}
	validResult(t, res, "/run/netns/"+c.Name, "net1", true) // the foreign eth0 has no default route
	// ADD repeated for the same interface finds its own veth and completes it: only a
	// foreign interface is a conflict.
	res2, err := e.newConfig().AddNetworkList(ctx, list, rtConf("ctr-taken", c, "net1"))
	if err != nil {
		t.Fatalf("repeated ADD of net1: %v", err)
	}
	if first, again := validResult(t, res, "/run/netns/"+c.Name, "net1", true), validResult(t, res2, "/run/netns/"+c.Name, "net1", true); ipOf(first) != ipOf(again) || first.Interfaces[1].Mac != again.Interfaces[1].Mac {
		t.Errorf("repeated ADD changed the interface: %+v then %+v", first, again)
	}
	if err := e.cfg.DelNetworkList(ctx, list, rtConf("ctr-taken", c, "net1")); err != nil {
		t.Fatal(err)
	}
	if out, err := c.Run(ctx, "ip", "link", "show", "net1"); err == nil {
		t.Fatalf("DEL left net1:\n%s", out)
	}
	foreignIntact("after ADD and DEL of net1")
}

// fieldsOf returns the field after key in an `ip -o` line ("" when absent).
func fieldsOf(line, key string) string {
	f := strings.Fields(line)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == key {
			return f[i+1]
		}
	}
	return ""
}
