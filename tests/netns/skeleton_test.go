package netns

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/netlab"
	"github.com/weavemesh/weave/internal/testutil"
)

// TestLaunchStatusStopThreeRouters launches three routers in three namespaces at once, each
// with its own state dir and socket, and checks what their reports and status say; then stop,
// relaunch (same identity) and a second launch refused.
func TestLaunchStatusStopThreeRouters(t *testing.T) {
	lab := netlab.New(t, netlab.Options{Hosts: 3})
	var rs []*router
	for _, h := range lab.Hosts {
		rs = append(rs, newRouter(t, h))
	}
	dumpOnFailure(t, rs...)
	for i, r := range rs {
		var peers []string
		if i > 0 {
			peers = append(peers, lab.Hosts[0].Addr.String())
		}
		r.launch(peers...)
	}
	names := map[string]bool{}
	for _, r := range rs {
		rep := r.report()
		if !rep.Ready || rep.Router.Name != r.name || rep.Router.NickName != shortName(r.host.Name) {
			t.Errorf("%s: report ready=%v name=%q nickname=%q, launch printed %q", r.host.Name, rep.Ready, rep.Router.Name, rep.Router.NickName, r.name)
		}
		if rep.Bridge.Name != "weave" || rep.Bridge.MTU <= 0 {
			t.Errorf("%s: bridge %+v", r.host.Name, rep.Bridge)
		}
		names[rep.Router.Name] = true
		// The bridge and the TAP exist in the router's namespace, and the socket is private.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, err := r.host.Run(ctx, "ip", "-o", "link", "show", "master", "weave")
		cancel()
		if err != nil || !strings.Contains(string(out), "vethwe-tap") {
			t.Errorf("%s: tap not on the bridge: %v %s", r.host.Name, err, out)
		}
		if fi, err := os.Stat(r.socket); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: socket %s mode %v err %v, want 0600", r.host.Name, r.socket, fi.Mode().Perm(), err)
		}
	}
	if len(names) != 3 {
		t.Fatalf("peer names not unique: %v", names)
	}
	// The two routers that knew only h1 find each other through it: everyone lists everyone.
	for _, r := range rs {
		testutil.Eventually(t, 20*time.Second, r.host.Name+" lists all three peers with established connections", func() error {
			rep := r.report()
			if len(rep.Router.Peers) != 3 {
				return fmt.Errorf("%d peers", len(rep.Router.Peers))
			}
			est := 0
			for _, c := range rep.Router.Connections {
				if c.State == "established" {
					est++
				}
			}
			if est != 2 {
				return fmt.Errorf("%d established connections: %+v", est, rep.Router.Connections)
			}
			return nil
		})
	}

	// Metrics carry Weave's names and agree with the report. Right after the connections
	// are established their overlay may not be chosen yet (type "unknown"), which on a loaded
	// machine a single snapshot caught: wait until both have one and the metrics say so.
	testutil.Eventually(t, 20*time.Second, "metrics agree with the report", func() error {
		types := map[string]int{}
		for _, c := range rs[0].report().Router.Connections {
			if c.State == "established" {
				if c.Overlay == "" {
					return fmt.Errorf("connection to %s has no overlay yet", c.Peer)
				}
				types[c.Overlay]++
			}
		}
		if types["sleeve"]+types["fastdp"] != 2 {
			return fmt.Errorf("established connections by overlay: %v", types)
		}
		m := rs[0].metrics()
		want := []string{
			"weave_connection_terminations_total ",
			"weave_peers 3",
			"weave_ready 1",
			`weave_ips{state="local-used"} `,
			"weave_max_ips 1.048576e+06",
			"weave_ipam_unreachable_count 0",
			"weave_ipam_pending_allocates 0",
			`weave_sleeve_frames_total{direction="in"} `,
			`weave_sleeve_drops_total{direction="out"} `,
			`weave_mesh_refused_total{reason="malformed_message"} 0`,
		}
		for typ, n := range types {
			want = append(want, fmt.Sprintf(`weave_connections{encryption="",state="established",type=%q} %d`, typ, n))
		}
		for _, w := range want {
			if !strings.Contains(m, w) {
				return fmt.Errorf("metrics lack %q (report: %v)", w, types)
			}
		}
		return nil
	})

	// Human status works.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := rs[1].ctl(ctx, "status")
	if err != nil || !strings.Contains(string(out), "Name: "+rs[1].name) {
		t.Errorf("status: %v\n%s", err, out)
	}

	// A second launch with the same state dir is refused with a clear error.
	out, err = rs[0].ctl(ctx, "launch")
	if err == nil || !strings.Contains(string(out), "already running") {
		t.Errorf("second launch: err=%v out=%s", err, out)
	}

	// Stop, then launch again: the same identity comes back.
	before := rs[2].name
	if out, err := rs[2].ctl(ctx, "stop"); err != nil {
		t.Fatalf("stop: %v\n%s", err, out)
	}
	if _, err := os.Stat(rs[2].socket); !os.IsNotExist(err) {
		t.Errorf("socket still there after stop: %v", err)
	}
	out, err = rs[2].ctl(ctx, "version")
	if err != nil || !strings.Contains(string(out), "not running") {
		t.Errorf("version after stop: %v %s", err, out)
	}
	rs[2].launch(lab.Hosts[0].Addr.String())
	if rs[2].name != before {
		t.Errorf("identity changed across stop/launch: %s -> %s", before, rs[2].name)
	}
}
