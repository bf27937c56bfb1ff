package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weavemesh/weave/api"
	"github.com/weavemesh/weave/internal/netdev"
)

// selfNetns is a real network namespace handle that needs no root: the test's own.
const selfNetns = "/proc/self/ns/net"

func fakeLinks(d *Daemon) *netdev.Fake { return d.links.(*netdev.Fake) }

// allocations are the addresses IPAM holds for (id, iface).
func allocations(d *Daemon, id, iface string) []netip.Prefix { return d.ipam.Lookup(id, iface) }

func attachCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// breakStateDir makes every later write of the endpoint records fail, as a full or
// read-only state dir does (root ignores file modes, so the records' directory becomes a file).
func breakStateDir(t *testing.T, d *Daemon) {
	t.Helper()
	blocker := filepath.Join(t.TempDir(), "not-a-dir")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	d.endpoints.path = filepath.Join(blocker, "endpoints.json")
}

// TestAttachUnwritableStateDirChangesNothing: an attach that cannot be recorded fails and
// leaves no interface, no address held and no ps entry (issue #12, scenario 7).
func TestAttachUnwritableStateDirChangesNothing(t *testing.T) {
	d := newTestDaemon(t)
	ctx := attachCtx(t)
	// A first endpoint attached while the state dir works.
	first, err := d.attach(ctx, api.AttachRequest{Target: selfNetns, IfName: "eth1"})
	if err != nil {
		t.Fatal(err)
	}
	breakStateDir(t, d)
	for _, req := range []api.AttachRequest{
		{Target: selfNetns}, // new endpoint, allocated address
		{Target: selfNetns, IfName: "eth2", CIDRs: []string{"10.32.9.9/12"}}, // new endpoint, given address
		{Target: selfNetns, IfName: "eth1", CIDRs: []string{"10.32.7.7/12"}}, // address added to the first
	} {
		_, err := d.attach(ctx, req)
		var ae *api.Error
		if !errors.As(err, &ae) || !strings.Contains(ae.Message, "nothing was changed") {
			t.Fatalf("attach %+v with an unwritable state dir: %v", req, err)
		}
	}
	fake := fakeLinks(d)
	for _, ifn := range []string{"ethwe", "eth2"} {
		if a, ok := fake.Attachment(selfNetns, ifn); ok {
			t.Errorf("interface %s made although the attach failed: %+v", ifn, a)
		}
		if ok, _ := fake.Exists(hostIfName(selfNetns, ifn)); ok {
			t.Errorf("host veth of %s left behind", ifn)
		}
		if got := allocations(d, selfNetns, ifn); len(got) != 0 {
			t.Errorf("addresses %v held for %s although the attach failed", got, ifn)
		}
	}
	a, _ := fake.Attachment(selfNetns, "eth1")
	if len(a.CIDRs) != 1 || a.CIDRs[0].String() != first.CIDRs[0] {
		t.Errorf("first endpoint's addresses changed by a failed attach: %v, want %v", a.CIDRs, first.CIDRs)
	}
	if got := allocations(d, selfNetns, "eth1"); len(got) != 1 {
		t.Errorf("first endpoint holds %v, want only %v", got, first.CIDRs)
	}
	eps := d.endpointList()
	if len(eps) != 1 || !strings.EqualFold(eps[0].ID, selfNetns) || len(eps[0].CIDRs) != 1 {
		t.Errorf("ps after failed attaches: %+v", eps)
	}
	if n := d.epEvents.persistErrors.Load(); n != 3 {
		t.Errorf("persist_error counted %d times for 3 attaches, want 3", n)
	}
	// Nor expose: no address on the bridge, none held.
	if _, err := d.expose(ctx, api.ExposeRequest{}); err == nil {
		t.Error("expose succeeded with an unwritable state dir")
	}
	if br, _ := fake.Link(d.cfg.Bridge); len(br.Addrs) != 0 {
		t.Errorf("bridge has %v after a failed expose", br.Addrs)
	}
	if got := allocations(d, api.ExposeID, d.cfg.Bridge); len(got) != 0 {
		t.Errorf("expose holds %v after failing", got)
	}
	// Detach cannot be recorded either: the endpoint stays whole.
	if _, err := d.detach(ctx, api.DetachRequest{Target: selfNetns, IfName: "eth1"}); err == nil {
		t.Error("detach succeeded with an unwritable state dir")
	}
	if _, ok := fake.Attachment(selfNetns, "eth1"); !ok {
		t.Error("failed detach removed the interface")
	}
}

// TestAttachFailureRollsBack: a device failure part-way leaves nothing behind: no half-made
// veth, no address held, no record.
func TestAttachFailureRollsBack(t *testing.T) {
	d := newTestDaemon(t)
	fake := fakeLinks(d)
	fake.AttachErr = func(netdev.AttachSpec) error { return errors.New("injected: gratuitous ARP failed") }
	if _, err := d.attach(attachCtx(t), api.AttachRequest{Target: selfNetns}); err == nil {
		t.Fatal("attach succeeded although the device failed")
	}
	if _, ok := fake.Attachment(selfNetns, "ethwe"); ok {
		t.Error("interface left after a failed attach")
	}
	if ok, _ := fake.Exists(hostIfName(selfNetns, "ethwe")); ok {
		t.Error("half-made host veth left after a failed attach")
	}
	if got := allocations(d, selfNetns, "ethwe"); len(got) != 0 {
		t.Errorf("addresses %v held after a failed attach", got)
	}
	if eps := d.endpointList(); len(eps) != 0 {
		t.Errorf("ps after a failed attach: %+v", eps)
	}
	d.endpoints.mu.Lock()
	n := len(d.endpoints.m)
	d.endpoints.mu.Unlock()
	if n != 0 {
		t.Errorf("%d records after a failed attach", n)
	}
	// The device works again: the same target attaches.
	fake.AttachErr = nil
	ep, err := d.attach(attachCtx(t), api.AttachRequest{Target: selfNetns})
	if err != nil {
		t.Fatalf("attach after the failure: %v", err)
	}
	// A failed re-attach (same addresses, or one more) takes back only what it added: the
	// endpoint keeps its interface, record and address.
	fake.AttachErr = func(netdev.AttachSpec) error { return errors.New("injected") }
	for _, cidrs := range [][]string{nil, {"10.32.44.44/12"}} {
		if _, err := d.attach(attachCtx(t), api.AttachRequest{Target: selfNetns, CIDRs: cidrs}); err == nil {
			t.Fatal("re-attach succeeded although the device failed")
		}
		if got := allocations(d, selfNetns, "ethwe"); len(got) != 1 || got[0].String() != ep.CIDRs[0] {
			t.Errorf("after a failed re-attach with %v IPAM holds %v, want %v", cidrs, got, ep.CIDRs)
		}
		if eps := d.endpointList(); len(eps) != 1 || len(eps[0].CIDRs) != 1 || eps[0].CIDRs[0] != ep.CIDRs[0] {
			t.Errorf("ps after a failed re-attach with %v: %+v", cidrs, eps)
		}
		if a, ok := fake.Attachment(selfNetns, "ethwe"); !ok || len(a.CIDRs) != 1 {
			t.Errorf("interface after a failed re-attach with %v: %+v %v", cidrs, a, ok)
		}
	}
}

// TestReconcileAfterKill: what a daemon killed mid-attach leaves (a pending record, a
// half-made veth, an address held) is undone on start; an endpoint whose interface is gone
// is forgotten and its address released; an intact one is adopted. Afterwards records,
// devices and IPAM agree and the interrupted target attaches again (issue #12, scenario 6).
func TestReconcileAfterKill(t *testing.T) {
	d := newTestDaemon(t)
	ctx := attachCtx(t)
	fake := fakeLinks(d)
	intact, err := d.attach(ctx, api.AttachRequest{Target: selfNetns, IfName: "eth1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.attach(ctx, api.AttachRequest{Target: selfNetns, IfName: "eth2"}); err != nil {
		t.Fatal(err)
	}
	// eth2's container went away while the daemon was down.
	if err := fake.Delete(hostIfName(selfNetns, "eth2")); err != nil {
		t.Fatal(err)
	}
	// The kill: ethwe's attach recorded, allocated and made its host veth, then died.
	fake.AttachErr = func(netdev.AttachSpec) error { return errors.New("killed") }
	d.endpoints.mu.Lock()
	d.endpoints.m[selfNetns+"/ethwe"] = &endpoint{ID: selfNetns, NetnsPath: selfNetns, IfName: "ethwe",
		HostIf: hostIfName(selfNetns, "ethwe"), Pending: true}
	d.endpoints.mu.Unlock()
	if _, err := d.addresses(ctx, selfNetns, "ethwe", nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := fake.Attach(netdev.AttachSpec{NetnsPath: selfNetns, IfName: "ethwe",
		HostIfName: hostIfName(selfNetns, "ethwe"), Bridge: d.cfg.Bridge}); err == nil {
		t.Fatal("fake did not fail")
	}
	fake.AttachErr = nil

	d.reconcileEndpoints()

	if ok, _ := fake.Exists(hostIfName(selfNetns, "ethwe")); ok {
		t.Error("half-made veth of the interrupted attach still there")
	}
	for _, ifn := range []string{"ethwe", "eth2"} {
		if got := allocations(d, selfNetns, ifn); len(got) != 0 {
			t.Errorf("%s still holds %v", ifn, got)
		}
	}
	eps := d.endpointList()
	if len(eps) != 1 || eps[0].CIDRs[0] != intact.CIDRs[0] {
		t.Fatalf("ps after reconcile: %+v, want only %v", eps, intact)
	}
	if got := allocations(d, selfNetns, "eth1"); len(got) != 1 || got[0].String() != intact.CIDRs[0] {
		t.Errorf("adopted endpoint holds %v in IPAM, want %v", got, intact.CIDRs)
	}
	ev := d.epEvents.snapshot()
	if ev["undone_on_start"] != 1 || ev["forgotten_on_start"] != 1 || ev["adopted_on_start"] != 1 {
		t.Errorf("events %v", ev)
	}
	// On disk too: a second start finds nothing to undo.
	reloaded, err := loadEndpoints(d.cfg.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(reloaded.m) != 1 || reloaded.m[selfNetns+"/eth1"] == nil {
		t.Errorf("records on disk after reconcile: %v", reloaded.m)
	}
	if _, err := d.attach(ctx, api.AttachRequest{Target: selfNetns}); err != nil {
		t.Fatalf("interrupted target cannot be attached again: %v", err)
	}
}

// TestAttachHalfMadeVethReplaced: a host veth left by an interrupted attach does not block
// the next attach of that container ("file exists").
func TestAttachHalfMadeVethReplaced(t *testing.T) {
	d := newTestDaemon(t)
	fake := fakeLinks(d)
	fake.AddLink(hostIfName(selfNetns, "ethwe"), netdev.FakeLink{Kind: "veth", Master: d.cfg.Bridge})
	if _, err := d.attach(attachCtx(t), api.AttachRequest{Target: selfNetns}); err != nil {
		t.Fatalf("attach over a half-made veth: %v", err)
	}
	if fake.StaleRemoved != 1 {
		t.Errorf("stale host ends replaced: %d, want 1", fake.StaleRemoved)
	}
}

// TestAttachRefusesNonNetnsTarget: a FIFO, a plain file or another kind of namespace is
// refused at once with a clear error, before any address is allocated (issue #12,
// scenario 10). Opening the FIFO would block until a writer came.
func TestAttachRefusesNonNetnsTarget(t *testing.T) {
	d := newTestDaemon(t)
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{fifo, plain, "/proc/self/ns/mnt", "/dev/null"} {
		start := time.Now()
		done := make(chan error, 1)
		go func() {
			_, err := d.attach(context.Background(), api.AttachRequest{Target: target})
			done <- err
		}()
		select {
		case err := <-done:
			var ae *api.Error
			if !errors.As(err, &ae) || ae.Code != api.CodeBadRequest {
				t.Errorf("attach %s: %v, want a bad-request error", target, err)
			}
			if err != nil && !strings.Contains(err.Error(), "not a network namespace") {
				t.Errorf("attach %s: %v, want it to say it is not a network namespace", target, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("attach %s still running after %v", target, time.Since(start))
		}
	}
	if owned := d.ipam.Owned(); len(owned) != 0 {
		t.Errorf("addresses held after refused attaches: %v", owned)
	}
	if n := d.epEvents.refusedTargets.Load(); n != 4 {
		t.Errorf("refused_target counted %d, want 4", n)
	}
}

// The API's CIDR lists are JSON arrays: empty is [], never null (clients iterate them).
func TestPrefixesToStringsEmptyIsArray(t *testing.T) {
	for _, in := range [][]netip.Prefix{nil, {}} {
		b, err := json.Marshal(api.Endpoint{ID: "x", CIDRs: prefixesToStrings(in)})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), `"cidrs":[]`) {
			t.Errorf("endpoint with no CIDRs encodes as %s, want \"cidrs\":[]", b)
		}
	}
	got := prefixesToStrings([]netip.Prefix{netip.MustParsePrefix("10.32.0.1/12")})
	if len(got) != 1 || got[0] != "10.32.0.1/12" {
		t.Errorf("got %q", got)
	}
}
