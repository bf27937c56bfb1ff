package netns

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weavemesh/weave/api"
	"github.com/weavemesh/weave/internal/netlab"
	"github.com/weavemesh/weave/internal/testutil"
)

// launchAll launches a router on each host with the peers given by index (public addresses)
// and the extra arguments.
func launchAll(t *testing.T, lab *netlab.Lab, hosts int, peers map[int][]int, args ...string) []*router {
	t.Helper()
	var rs []*router
	for _, h := range lab.Hosts[:hosts] {
		rs = append(rs, newRouter(t, h))
	}
	dumpOnFailure(t, rs...)
	for i, r := range rs {
		a := append([]string{}, args...)
		for _, p := range peers[i] {
			a = append(a, lab.Hosts[p].PublicAddr.String())
		}
		r.launch(a...)
	}
	return rs
}

// knowsAll checks that r lists exactly the given peer names and has a data route to each of
// the others.
func knowsAll(r *router, names []string) error {
	rep := r.report()
	var got []string
	for _, p := range rep.Router.Peers {
		got = append(got, p.Name)
	}
	slices.Sort(got)
	want := slices.Clone(names)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		return fmt.Errorf("%s lists peers %v, want %v", r.host.Name, got, want)
	}
	routed := map[string]bool{}
	for _, rt := range rep.Router.Routes {
		routed[rt.Dest] = true
	}
	for _, n := range names {
		if n != r.name && !routed[n] {
			return fmt.Errorf("%s has no route to %s (routes %v)", r.host.Name, n, rep.Router.Routes)
		}
	}
	return nil
}

// TestMeshFiveHostsFirewalled is Weave's classic example: 1 knows 2 and 3, 3 knows 4 and 5,
// and 1 cannot talk to 4 or 5 at all. Every router lists all five peers and a route to each;
// then one is killed with -9 and the others' failure detector and topology drop it, and a
// restart brings it back under the same name.
func TestMeshFiveHostsFirewalled(t *testing.T) {
	lab := netlab.New(t, netlab.Options{Hosts: 5})
	h := lab.Hosts
	for _, p := range [][2]int{{0, 3}, {0, 4}} {
		if err := lab.Firewall(h[p[0]], h[p[1]]); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	rs := launchAll(t, lab, 5, map[int][]int{0: {1, 2}, 2: {3, 4}}, "--password", "mesh-secret")
	var names []string
	for _, r := range rs {
		names = append(names, r.name)
	}
	for _, r := range rs {
		testutil.Eventually(t, 30*time.Second, r.host.Name+" knows all five peers", func() error { return knowsAll(r, names) })
	}
	t.Logf("five routers launched and all peer lists complete in %v", time.Since(start).Round(time.Millisecond))
	// Host 1's data to 4 and 5 goes through 3 (the only one connected to both sides).
	rep := rs[0].report()
	for _, rt := range rep.Router.Routes {
		if (rt.Dest == names[3] || rt.Dest == names[4]) && rt.Via != names[1] && rt.Via != names[2] {
			t.Errorf("route from h1 to %s via %s: not through a neighbour", rt.Dest, rt.Via)
		}
	}
	for _, c := range rep.Router.Connections {
		if c.State == api.StateEstablished && !c.Encrypted {
			t.Errorf("connection to %s not encrypted", c.Peer)
		}
	}

	// kill -9 host 5's router: the others drop it from the topology, and memberlist agrees
	// it is dead.
	victim := rs[4]
	killed := time.Now()
	victim.kill9(t)
	for _, r := range rs[:4] {
		testutil.Eventually(t, 60*time.Second, r.host.Name+" marks h5 dead and drops it", func() error {
			rep := r.report()
			for _, p := range rep.Router.Peers {
				if p.Name == victim.name {
					return fmt.Errorf("%s still lists %s", r.host.Name, victim.name)
				}
			}
			for _, m := range rep.Router.Members {
				if m.Peer == victim.name && (m.State == "dead" || m.State == "left") {
					return nil
				}
			}
			return fmt.Errorf("%s: memberlist view of %s: %+v", r.host.Name, victim.name, rep.Router.Members)
		})
	}
	t.Logf("killed router dropped from the topology and agreed dead by all in %v", time.Since(killed).Round(time.Millisecond))

	// Restart it: same name, everyone lists it again.
	before := victim.name
	victim.launch("--password", "mesh-secret", h[2].PublicAddr.String())
	if victim.name != before {
		t.Fatalf("restarted router has a new name %s, was %s", victim.name, before)
	}
	for _, r := range rs {
		testutil.Eventually(t, 30*time.Second, r.host.Name+" knows the restarted peer again", func() error { return knowsAll(r, names) })
	}
}

// TestMeshNATAndWrongPassword: a host behind a NAT, launched with a public peer's address,
// joins and is listed by everyone; a host with the wrong password never appears in anyone's
// peer list and says why.
func TestMeshNATAndWrongPassword(t *testing.T) {
	lab := netlab.New(t, netlab.Options{Hosts: 4, NAT: []int{2}})
	rs := launchAll(t, lab, 3, map[int][]int{1: {0}, 2: {0}}, "--password", "right")
	intruder := newRouter(t, lab.Hosts[3])
	dumpOnFailure(t, intruder)
	intruder.launch("--password", "wrong", lab.Hosts[0].PublicAddr.String(), lab.Hosts[1].PublicAddr.String())

	var names []string
	for _, r := range rs {
		names = append(names, r.name)
	}
	for _, r := range rs {
		testutil.Eventually(t, 30*time.Second, r.host.Name+" knows the three honest peers, NATed one included", func() error {
			return knowsAll(r, names)
		})
	}
	// The intruder's attempts fail with the reason, and nobody ever lists it.
	testutil.Eventually(t, 30*time.Second, "the intruder's connections fail with a password reason", func() error {
		rep := intruder.report()
		for _, c := range rep.Router.Connections {
			if c.State == api.StateFailed && strings.Contains(c.Info, "password") {
				return nil
			}
		}
		return fmt.Errorf("intruder connections: %+v", rep.Router.Connections)
	})
	for _, r := range rs {
		for _, p := range r.report().Router.Peers {
			if p.Name == intruder.name {
				t.Errorf("%s lists the intruder %s", r.host.Name, p.Name)
			}
		}
	}
	if got := len(intruder.report().Router.Peers); got != 1 {
		t.Errorf("the intruder lists %d peers, want only itself", got)
	}
	// The public peers see the NATed one connect from the NAT's address.
	found := false
	for _, c := range rs[0].report().Router.Connections {
		if c.Peer == rs[2].name && strings.HasPrefix(c.Address, lab.Hosts[2].PublicAddr.String()+":") && !c.Outbound {
			found = true
		}
	}
	if !found {
		t.Errorf("h1 has no inbound connection from the NATed peer at %s: %+v", lab.Hosts[2].PublicAddr, rs[0].report().Router.Connections)
	}
}
