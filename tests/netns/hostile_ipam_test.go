package netns

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weavemesh/weave/api"
	"github.com/weavemesh/weave/api/client"
	"github.com/weavemesh/weave/internal/netlab"
	"github.com/weavemesh/weave/internal/testutil"
)

// psAddresses runs `weavectl ps` on every router and maps each address to the endpoint
// that holds it ("host/id"); an address held twice fails the test.
func psAddresses(t *testing.T, rs ...*router) map[netip.Addr]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	held := map[netip.Addr]string{}
	for _, r := range rs {
		out, err := r.ctl(ctx, "ps")
		if err != nil {
			t.Fatalf("ps in %s: %v\n%s", r.host.Name, err, out)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			f := strings.Fields(line)
			if len(f) < 3 {
				continue // an endpoint without addresses
			}
			who := r.host.Name + "/" + f[0]
			for _, c := range f[2:] {
				p, err := netip.ParsePrefix(c)
				if err != nil {
					t.Fatalf("ps in %s printed %q", r.host.Name, line)
				}
				if other, dup := held[p.Addr()]; dup {
					t.Errorf("address %s held twice: by %s and by %s", p.Addr(), other, who)
				}
				held[p.Addr()] = who
			}
		}
	}
	return held
}

// assertAwaitsRing checks that r, isolated from its peers, keeps an allocation waiting with
// the status saying why, and gives up at the caller's deadline without making a ring.
func assertAwaitsRing(t *testing.T, r *router) {
	t.Helper()
	cl := client.New(r.socket)
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res := make(chan error, 1)
	go func() {
		resp, err := cl.IPAMAllocate(ctx, api.IPAMRequest{ID: "isolated", Iface: "eth0"})
		if err == nil {
			err = fmt.Errorf("allocated %v without knowing the ring", resp.CIDRs)
		}
		res <- err
	}()
	testutil.Eventually(t, 4*time.Second, "the isolated router says it awaits the ring", func() error {
		ipam := r.report().IPAM
		if ipam == nil || !strings.Contains(ipam.Status, "awaiting the ring") || ipam.PendingAllocs < 1 {
			return fmt.Errorf("ipam %+v", ipam)
		}
		return nil
	})
	if err := <-res; err == nil || !strings.Contains(err.Error(), "deadline") && !strings.Contains(err.Error(), "context") {
		t.Fatalf("allocation while isolated: %v", err)
	}
	if ipam := r.report().IPAM; len(ipam.Owners) != 0 {
		t.Fatalf("the isolated router made a ring: %+v", ipam.Owners)
	}
}

// TestHostileIPAMLostDatabase is scenario 5 of the hardening issue: a router whose ipam.db
// is deleted (or emptied) while it is stopped, then launched again without peer arguments,
// must adopt the ring its peers hold, keep the addresses of the containers still attached
// on its host, and never hand out an address a container elsewhere holds. The first case
// relaunches a router whose persisted targets name the others; the second the router that
// was launched alone (no targets at all: only its membership record says it had a ring);
// the third a router that lost its membership record too (only its targets are left).
func TestHostileIPAMLostDatabase(t *testing.T) {
	const rng = "10.42.0.0/24"
	lab := netlab.New(t, netlab.Options{Hosts: 3})
	// h1 alone, h2 with h1, h3 with h1 and h2, plain consensus: h1 makes the ring at its
	// first attach and the others borrow from it.
	rs := launchAll(t, lab, 3, map[int][]int{1: {0}, 2: {0, 1}}, "--ipalloc-range", rng)
	attachMany(t, rs[0], "a", 3)
	attachMany(t, rs[1], "b", 3)
	attachMany(t, rs[2], "c", 3)
	psAddresses(t, rs...)
	for _, r := range rs {
		testutil.Eventually(t, 30*time.Second, r.host.Name+" knows a ring of three owners", func() error {
			if ipam := r.report().IPAM; ipam == nil || len(ipam.Owners) != 3 {
				return fmt.Errorf("ipam %+v", ipam)
			}
			return nil
		})
	}

	for i, tc := range []struct {
		loss   string
		victim int
	}{{"deleted", 1}, {"emptied", 0}, {"deleted with its membership record", 2}} {
		r := rs[tc.victim]
		t.Logf("%s: the ipam.db of %s is %s", tc.loss, r.host.Name, tc.loss)
		before := psAddresses(t, r)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		if out, err := r.ctl(ctx, "stop"); err != nil {
			cancel()
			t.Fatalf("stop: %v %s", err, out)
		}
		cancel()
		db := filepath.Join(r.stateDir, "ipam.db")
		var err error
		switch tc.loss {
		case "emptied":
			err = os.Truncate(db, 0)
		case "deleted with its membership record":
			// Nothing records the ring any more: its persisted targets (and the peers the
			// mesh shows) must keep it from agreeing with itself alone on a new one.
			err = errors.Join(os.Remove(db), os.Remove(filepath.Join(r.stateDir, "ipam-member")))
		default:
			err = os.Remove(db)
		}
		if err != nil {
			t.Fatal(err)
		}
		if tc.loss == "emptied" {
			// Cut off from its peers, the relaunched router must wait for their ring, say so,
			// and keep requests waiting rather than make a ring of its own.
			for j, o := range rs {
				if j != tc.victim {
					if err := lab.Firewall(r.host, o.host); err != nil {
						t.Fatal(err)
					}
				}
			}
			r.launch("--ipalloc-range", rng)
			assertAwaitsRing(t, r)
			for j, o := range rs {
				if j != tc.victim {
					if err := lab.Unfirewall(r.host, o.host); err != nil {
						t.Fatal(err)
					}
				}
			}
		} else {
			r.launch("--ipalloc-range", rng) // no peer arguments
		}

		fresh := attachMany(t, r, fmt.Sprintf("n%d", i), 4)
		for j, o := range rs {
			if j != tc.victim {
				attachMany(t, o, fmt.Sprintf("m%d", i), 2)
			}
		}
		held := psAddresses(t, rs...)
		for addr, who := range before {
			if held[addr] != who {
				t.Errorf("%s: %s held %s before the relaunch, now %q holds it", tc.loss, who, addr, held[addr])
			}
		}
		for name, p := range fresh {
			if !netip.MustParsePrefix(rng).Contains(p.Addr()) {
				t.Errorf("%s got %s outside %s", name, p, rng)
			}
		}
		// The relaunched router adopted the ring: it does not own everything, nobody refuses
		// its ring, and its IPAM holds the addresses of its containers from before.
		rep := r.report()
		if rep.IPAM == nil {
			t.Fatal("no ipam in the report")
		}
		for _, o := range rep.IPAM.Owners {
			if o.Percent >= 100 {
				t.Errorf("%s: %s owns %.0f%% of the range after the relaunch", tc.loss, o.Peer, o.Percent)
			}
		}
		if len(rep.IPAM.Owners) < 2 {
			t.Errorf("%s: relaunched router's ring has owners %+v", tc.loss, rep.IPAM.Owners)
		}
		owned := map[netip.Addr]bool{}
		for _, a := range rep.IPAM.Owned {
			for _, c := range a.CIDRs {
				if p, err := netip.ParsePrefix(c); err == nil {
					owned[p.Addr()] = true
				}
			}
		}
		for addr := range before {
			if !owned[addr] {
				t.Errorf("%s: IPAM of the relaunched router does not hold %s of its attached container", tc.loss, addr)
			}
		}
		for _, o := range rs {
			if e := o.report().IPAM.Error; e != "" {
				t.Errorf("%s: %s refuses a ring: %s", tc.loss, o.host.Name, e)
			}
		}
		if t.Failed() {
			t.FailNow()
		}
	}
}
