package netns

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weavemesh/weave/api"
	"github.com/weavemesh/weave/api/client"
	"github.com/weavemesh/weave/internal/netlab"
	"github.com/weavemesh/weave/internal/testutil"
)

// attachMany attaches n new containers on r's host concurrently, without CIDRs, and returns
// container name -> address.
func attachMany(t *testing.T, r *router, prefix string, n int) map[string]netip.Prefix {
	t.Helper()
	var cs []*netlab.Container
	for i := range n {
		c, err := r.host.AddContainer(fmt.Sprintf("%s%d", prefix, i))
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var mu sync.Mutex
	got := map[string]netip.Prefix{}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := r.ctl(ctx, "attach", c.Name)
			if err != nil {
				errs <- fmt.Errorf("attach %s: %v: %s", c.Name, err, out)
				return
			}
			p, err := netip.ParsePrefix(strings.TrimSpace(string(out)))
			if err != nil {
				errs <- fmt.Errorf("attach %s printed %q", c.Name, out)
				return
			}
			mu.Lock()
			got[c.Name] = p
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	return got
}

func assertUnique(t *testing.T, sets ...map[string]netip.Prefix) {
	t.Helper()
	owner := map[netip.Addr]string{}
	for _, set := range sets {
		for name, p := range set {
			if other, dup := owner[p.Addr()]; dup {
				t.Errorf("address %s given to both %s and %s", p.Addr(), other, name)
			}
			owner[p.Addr()] = name
		}
	}
}

// TestIPAMThreeHostsThirtyEach: three routers agree on the ring by consensus and each
// attaches 30 containers at once: 90 unique addresses. A restarted router keeps them; a
// killed one's space is taken over with rmpeer and allocations go on.
func TestIPAMThreeHostsThirtyEach(t *testing.T) {
	lab := netlab.New(t, netlab.Options{Hosts: 3})
	rs := launchAll(t, lab, 3, map[int][]int{1: {0}, 2: {0, 1}}, "--ipalloc-init", "consensus=3", "--ipalloc-range", "10.40.0.0/22")
	sets := make([]map[string]netip.Prefix, len(rs))
	var wg sync.WaitGroup
	for i, r := range rs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sets[i] = attachMany(t, r, fmt.Sprintf("a%d", i), 30)
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	assertUnique(t, sets...)
	for _, s := range sets {
		for name, p := range s {
			if !netip.MustParsePrefix("10.40.0.0/22").Contains(p.Addr()) || p.Bits() != 22 {
				t.Errorf("%s got %s, outside the range or without its prefix length", name, p)
			}
		}
	}
	// Containers really reach each other across hosts with IPAM addresses.
	var from *netlab.Container
	for _, c := range lab.Hosts[0].Containers() {
		from = c
		break
	}
	var toAddr netip.Addr
	for _, p := range sets[1] {
		toAddr = p.Addr()
		break
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	testutil.Eventually(t, 20*time.Second, "ping across hosts with IPAM addresses", func() error {
		out, err := from.Run(ctx, "ping", "-c", "1", "-W", "1", toAddr.String())
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})

	// API latency of an allocation on a ready ring (the socket is reachable from here).
	cl := client.New(rs[0].socket)
	defer cl.Close()
	var lat []time.Duration
	for i := range 100 {
		start := time.Now()
		if _, err := cl.IPAMAllocate(ctx, api.IPAMRequest{ID: fmt.Sprintf("lat%d", i), Iface: "eth0"}); err != nil {
			t.Fatalf("allocate through the API: %v", err)
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	t.Logf("IPAM allocation through the API: p50 %v, p99 %v (100 allocations)", lat[49], lat[98])
	for i := range 100 {
		if _, err := cl.IPAMRelease(ctx, api.IPAMRequest{ID: fmt.Sprintf("lat%d", i), Iface: "eth0"}); err != nil {
			t.Fatalf("release: %v", err)
		}
	}

	// Restart router 2: the same containers get the same addresses back.
	r := rs[1]
	if out, err := r.ctl(ctx, "stop"); err != nil {
		t.Fatalf("stop: %v %s", err, out)
	}
	r.launch(lab.Hosts[0].PublicAddr.String(), "--ipalloc-init", "consensus=3", "--ipalloc-range", "10.40.0.0/22")
	for name, p := range sets[1] {
		out, err := r.ctl(ctx, "attach", name)
		if err != nil || strings.TrimSpace(string(out)) != p.String() {
			t.Errorf("after restart %s got %q (%v), had %s", name, out, err, p)
		}
	}

	// kill -9 router 3; rmpeer it on router 1: its space is taken over and new allocations
	// proceed.
	dead := rs[2]
	dead.kill9(t)
	testutil.Eventually(t, 30*time.Second, "h1 sees h3's space unreachable", func() error {
		rep := rs[0].report()
		if rep.IPAM == nil {
			return fmt.Errorf("no ipam in report")
		}
		for _, o := range rep.IPAM.Owners {
			if o.Peer == dead.name && !o.Reachable {
				return nil
			}
		}
		return fmt.Errorf("owners %+v", rep.IPAM.Owners)
	})
	out, err := rs[0].ctl(ctx, "status", "ipam")
	if err != nil || !strings.Contains(string(out), "unreachable!") {
		t.Errorf("status ipam does not flag the dead owner: %v\n%s", err, out)
	}
	out, err = rs[0].ctl(ctx, "rmpeer", "h3")
	if err != nil || !strings.Contains(string(out), "IPs taken over from "+dead.name) || strings.HasPrefix(string(out), "0 ") {
		t.Fatalf("rmpeer: %v %s", err, out)
	}
	for _, o := range rs[0].report().IPAM.Owners {
		if o.Peer == dead.name {
			t.Errorf("dead peer still owns space after rmpeer: %+v", o)
		}
	}
	more := attachMany(t, rs[0], "b", 5)
	assertUnique(t, append(sets, more)...)
}

// TestIPAMPartitionHealsWithoutDuplicates: with the ring split, hosts on both sides of a
// partition attach containers; after the partition heals no address is held twice and the
// rings agree.
func TestIPAMPartitionHealsWithoutDuplicates(t *testing.T) {
	lab := netlab.New(t, netlab.Options{Hosts: 3})
	rs := launchAll(t, lab, 3, map[int][]int{1: {0}, 2: {0, 1}}, "--ipalloc-init", "consensus=3", "--ipalloc-range", "10.41.0.0/24")
	before := attachMany(t, rs[0], "p", 2)
	// Everyone holds a share of the ring before the partition.
	for _, r := range rs {
		testutil.Eventually(t, 30*time.Second, r.host.Name+" has the ring", func() error {
			if rep := r.report(); rep.IPAM == nil || rep.IPAM.Status != "ready" || len(rep.IPAM.Owners) < 1 {
				return fmt.Errorf("ipam %+v", rep.IPAM)
			}
			return nil
		})
	}
	h := lab.Hosts
	for _, p := range [][2]int{{0, 1}, {0, 2}} {
		if err := lab.Firewall(h[p[0]], h[p[1]]); err != nil {
			t.Fatal(err)
		}
	}
	a := attachMany(t, rs[0], "l", 8)
	b := attachMany(t, rs[1], "r", 8)
	c := attachMany(t, rs[2], "s", 8)
	for _, p := range [][2]int{{0, 1}, {0, 2}} {
		if err := lab.Unfirewall(h[p[0]], h[p[1]]); err != nil {
			t.Fatal(err)
		}
	}
	assertUnique(t, before, a, b, c)
	// The healed rings agree.
	testutil.Eventually(t, 60*time.Second, "rings agree after the partition", func() error {
		var first string
		for _, r := range rs {
			rep := r.report()
			var toks []string
			for _, e := range rep.IPAM.Entries {
				toks = append(toks, e.Token+"="+e.Peer)
			}
			s := strings.Join(toks, ",")
			if first == "" {
				first = s
			} else if s != first {
				return fmt.Errorf("rings differ: %s vs %s", first, s)
			}
		}
		return nil
	})
}
