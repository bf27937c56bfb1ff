package vm

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/netlab"
	"github.com/weavemesh/weave/internal/testutil"
	"github.com/weavemesh/weave/internal/vmlab"
)

// TestVMSleeveNetem: the sleeve under the underlay impairments only netem can make (the
// host kernel has no sch_netem). One VM, two independent labs of two hosts:
//   - 1% then 5% loss: TCP through the sleeve keeps moving and nothing is delivered twice;
//     at 5% the GSO passthrough backs off (the sender learns of lost super-frames and cuts
//     segments);
//   - 20 ms ± 5 ms delay with 25% reordering, encrypted: every ping comes back exactly once
//     (the replay window takes reordered datagrams), TCP keeps moving.
func TestVMSleeveNetem(t *testing.T) {
	if !vmlab.Require(t, vmlab.Modules("sch_netem"), vmlab.Timeout(5*time.Minute)) {
		return
	}
	t.Run("loss1-then-5", func(t *testing.T) {
		lab := netlab.New(t, netlab.Options{Hosts: 2})
		nodes := launchPair(t, lab, "--no-fastdp")
		pingExactlyOnce(t, nodes[0], nodes[1], 5, false) // the path works before the loss
		if err := lab.SetNetem(lab.Hosts[1], netlab.Netem{LossPercent: 1}); err != nil {
			t.Fatal(err)
		}
		if gbps := iperf(t, nodes[0], nodes[1], 2); gbps <= 0 {
			t.Fatal("TCP moved nothing over the path losing 1%")
		}
		pingExactlyOnce(t, nodes[0], nodes[1], 40, true)
		t.Logf("at 1%%: sender %s; receiver %s", nodes[0].metricsMatching("weave_sleeve_gso_backoffs_total"),
			nodes[1].metricsMatching(`weave_sleeve_refused_total{reason="gso_incomplete"}`))
		if err := lab.SetNetem(lab.Hosts[1], netlab.Netem{LossPercent: 5}); err != nil {
			t.Fatal(err)
		}
		// Losses are random: stream until the sender has heard of enough of them.
		testutil.Eventually(t, 90*time.Second, "the sender backs off from whole super-frames", func() error {
			if gbps := iperf(t, nodes[0], nodes[1], 2); gbps <= 0 {
				t.Fatal("TCP moved nothing over the lossy path")
			}
			if v := nodes[0].metric("weave_sleeve_gso_backoffs_total"); v < 1 {
				return fmt.Errorf("no back-off yet")
			}
			return nil
		})
		if gbps := iperf(t, nodes[0], nodes[1], 2); gbps <= 0 {
			t.Error("TCP moved nothing after the back-off")
		}
		if v := nodes[0].metric(`weave_router_frames_total{event="gso_cut"}`); v < 1 {
			t.Error("the sender cut no super-frame after backing off")
		}
		pingExactlyOnce(t, nodes[0], nodes[1], 40, true)
		t.Logf("receiver: %s", nodes[1].metricsMatching("weave_sleeve_refused_total"))
	})
	t.Run("delay20ms-jitter5ms-reorder", func(t *testing.T) {
		lab := netlab.New(t, netlab.Options{Hosts: 2})
		nodes := launchPair(t, lab, "--no-fastdp", "--password", "vm-netem-secret")
		if err := lab.SetNetem(lab.Hosts[1], netlab.Netem{
			Delay: 20 * time.Millisecond, Jitter: 5 * time.Millisecond, ReorderPercent: 25,
		}); err != nil {
			t.Fatal(err)
		}
		rtt := pingExactlyOnce(t, nodes[0], nodes[1], 40, false)
		// netem delays both directions of h2's link: a round trip crosses it twice.
		if rtt < 15*time.Millisecond {
			t.Errorf("average RTT %v: the 20 ms netem delay is not on the path", rtt)
		}
		if gbps := iperf(t, nodes[0], nodes[1], 3); gbps <= 0 {
			t.Error("TCP moved nothing over the reordering path")
		}
		if gbps := iperf(t, nodes[1], nodes[0], 2); gbps <= 0 {
			t.Error("TCP moved nothing over the reordering path, reverse direction")
		}
		// The pieces of super-frames arrive shuffled (jitter) but none is lost: the receiver
		// puts them together (before it did, it dropped 192-271 in these few seconds).
		for _, n := range nodes {
			t.Logf("%s: %s; %s", n.h.Name, n.metricsMatching("weave_sleeve_refused_total"),
				n.metricsMatching(`weave_router_frames_total{event="gso_`))
			// Without super-frames crossing whole, nothing below would be tested.
			if v := n.metric(`weave_router_frames_total{event="gso_whole"}`); v < 1 {
				t.Errorf("%s passed no super-frame whole", n.h.Name)
			}
			if v := n.metric(`weave_sleeve_refused_total{reason="gso_incomplete"}`); v > maxReorderIncomplete {
				t.Errorf("%s dropped %v super-frames as incomplete on a path that reorders but loses nothing, want at most %d",
					n.h.Name, v, maxReorderIncomplete)
			}
			if v := n.metric(`weave_sleeve_refused_total{reason="malformed"}`); v != 0 {
				t.Errorf("%s refused %v reordered datagrams or pieces as malformed", n.h.Name, v)
			}
		}
	})
}

// maxReorderIncomplete bounds the super-frames a receiver may drop as incomplete in the
// delay/reorder case, where nothing is lost: measured 0 after the reassembly took
// reordered pieces, 192-271 before; 10 is the margin for a super-frame spread over more
// than the reassembly's slots when the VM stalls.
const maxReorderIncomplete = 10

func iperf(t *testing.T, from, to *node, secs int) float64 {
	t.Helper()
	gbps, err := netlab.Iperf(context.Background(), from.c, to.c, to.addr, secs)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("iperf %s -> %s: %.3f Gbit/s (TCG: not a speed figure)", from.h.Name, to.h.Name, gbps)
	return gbps
}

var (
	pingReceived = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)
	pingAvg      = regexp.MustCompile(`= [0-9.]+/([0-9.]+)/`)
)

// pingExactlyOnce pings to's container from from's, count times, and fails if any reply
// came twice (iputils reports "+N duplicates") or, unless lossy, if any is missing. It
// returns the average RTT. The first echo waits for ARP across the overlay.
func pingExactlyOnce(t *testing.T, from, to *node, count int, lossy bool) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := testutil.WaitFor(ctx, 30*time.Second, func() error {
		_, err := from.c.Run(ctx, "ping", "-n", "-c", "1", "-W", "1", to.addr.String())
		return err
	}); err != nil {
		t.Fatalf("%s cannot reach %s over the overlay: %v", from.h.Name, to.addr, err)
	}
	out, err := from.c.Run(ctx, "ping", "-n", "-q", "-c", strconv.Itoa(count), "-i", "0.05", "-W", "2", to.addr.String())
	m := pingReceived.FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("ping: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "duplicates") {
		t.Errorf("replies delivered twice through the sleeve:\n%s", out)
	}
	sent, _ := strconv.Atoi(m[1])
	got, _ := strconv.Atoi(m[2])
	if got == 0 || (!lossy && got != sent) {
		t.Errorf("%d of %d echoes came back:\n%s", got, sent, out)
	}
	var avg time.Duration
	if a := pingAvg.FindStringSubmatch(string(out)); a != nil {
		ms, _ := strconv.ParseFloat(a[1], 64)
		avg = time.Duration(ms * float64(time.Millisecond))
	}
	t.Logf("ping %s -> %s: %d/%d back, avg %v", from.h.Name, to.addr, got, sent, avg)
	return avg
}
