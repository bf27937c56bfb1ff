package netlab

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Netem is a netem qdisc: loss, delay with jitter, reordering. The test machine's kernel has
// no sch_netem; Debian's has it, so only tests running in the VM lab (internal/vmlab, with
// vmlab.Modules("sch_netem")) use this. Elsewhere DropPercent gives random loss via iptables.
type Netem struct {
	// LossPercent drops that share of packets at random (0..100).
	LossPercent float64
	// Delay holds every packet back; Jitter varies it by up to ± that much, which reorders
	// packets whose delays cross.
	Delay, Jitter time.Duration
	// ReorderPercent sends that share of packets at once, ahead of the delayed ones (needs Delay).
	ReorderPercent float64
	// DuplicatePercent sends that share of packets twice (what a buggy path does).
	DuplicatePercent float64
}

func (n Netem) zero() bool { return n == Netem{} }

// args is the tc netem argument list.
func (n Netem) args() ([]string, error) {
	pct := func(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) + "%" }
	for _, p := range []float64{n.LossPercent, n.ReorderPercent, n.DuplicatePercent} {
		if p < 0 || p > 100 {
			return nil, fmt.Errorf("netlab: netem percentage %v out of range 0..100", p)
		}
	}
	if n.Delay < 0 || n.Jitter < 0 || n.Jitter > n.Delay || n.Delay > time.Minute {
		return nil, fmt.Errorf("netlab: netem delay %v ± %v out of range", n.Delay, n.Jitter)
	}
	if n.ReorderPercent > 0 && n.Delay == 0 {
		return nil, errors.New("netlab: netem reordering needs a delay")
	}
	us := func(d time.Duration) string { return strconv.FormatInt(d.Microseconds(), 10) + "us" }
	a := []string{"netem"}
	if n.Delay > 0 {
		a = append(a, "delay", us(n.Delay))
		if n.Jitter > 0 {
			a = append(a, us(n.Jitter))
		}
	}
	if n.ReorderPercent > 0 {
		a = append(a, "reorder", pct(n.ReorderPercent))
	}
	if n.LossPercent > 0 {
		a = append(a, "loss", pct(n.LossPercent))
	}
	if n.DuplicatePercent > 0 {
		a = append(a, "duplicate", pct(n.DuplicatePercent))
	}
	return a, nil
}

// SetNetem impairs h's link to the underlay with n in both directions: on the egress of h's
// (or its NAT's) "eth0" and on the egress of the underlay bridge port towards it, as netem acts
// only on what a device sends. The zero Netem removes the impairment.
func (l *Lab) SetNetem(h *Host, n Netem) error {
	if h == nil || h.lab != l {
		return errors.New("netlab: host does not belong to this lab")
	}
	args, err := n.args()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), impairLimit)
	defer cancel()
	edge := h.Name
	if h.NAT != "" {
		edge = h.NAT
	}
	for _, dev := range [][2]string{{edge, UnderlayLink}, {l.Underlay, portName(h.Index)}} {
		ns, link := dev[0], dev[1]
		if n.zero() {
			out, err := runCmd(ctx, "tc", "-n", ns, "qdisc", "del", "dev", link, "root")
			// Deleting what is not there is the no-op the zero Netem promises.
			if err != nil && !strings.Contains(string(out), "No such file") && !strings.Contains(string(out), "Cannot delete qdisc with handle of zero") {
				return fmt.Errorf("remove netem on %s/%s: %w", ns, link, err)
			}
			continue
		}
		if _, err := runCmd(ctx, "tc", append([]string{"-n", ns, "qdisc", "replace", "dev", link, "root"}, args...)...); err != nil {
			return fmt.Errorf("set netem on %s/%s: %w", ns, link, err)
		}
	}
	return nil
}
