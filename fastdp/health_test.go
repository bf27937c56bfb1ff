package fastdp

import (
	"strings"
	"testing"
	"time"
)

var testTiming = Timing{Interval: time.Second, DownAfter: 3 * time.Second, RecoverAfter: 4 * time.Second,
	MaxHoldoff: 30 * time.Second, StableAfter: time.Minute}

// clock is a fake clock that the tests advance by hand.
type clock struct{ t time.Time }

func (c *clock) now() time.Time                { return c.t }
func (c *clock) add(d time.Duration) time.Time { c.t = c.t.Add(d); return c.t }

// beatsBothWays feeds one round of full-size heartbeats passing both ways.
func beatsBothWays(h *health, now time.Time) {
	h.observe(evAckFull, now)
	h.observe(evRecvFull, now)
}

// run advances the clock second by second for d, feeding good heartbeats when ok, and
// returns the states seen after each step.
func run(h *health, c *clock, d time.Duration, ok bool) []State {
	var seen []State
	for end := c.t.Add(d); c.t.Before(end); {
		now := c.add(time.Second)
		if ok {
			beatsBothWays(h, now)
		}
		h.step(now)
		seen = append(seen, h.state)
	}
	return seen
}

func TestHealthProbingToHealthy(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	h := newHealth(testTiming, 6784, c.now())
	if h.state != StateProbing || h.reason != ReasonProbing {
		t.Fatalf("new: %s/%s, want probing/probing", h.state, h.reason)
	}
	// One direction only is not enough.
	now := c.add(time.Second)
	h.observe(evAckFull, now)
	if h.step(now) || h.state != StateProbing {
		t.Fatalf("after one-way evidence: %s, want probing", h.state)
	}
	h.observe(evRecvFull, now)
	if !h.step(now) || h.state != StateHealthy || h.reason != ReasonNone {
		t.Fatalf("after both ways: %s/%s, want healthy", h.state, h.reason)
	}
}

func TestHealthProbingTimesOutAsBlocked(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	h := newHealth(testTiming, 6784, c.now())
	states := run(h, c, 3*time.Second, false)
	if got := states[len(states)-1]; got != StateUnhealthy {
		t.Fatalf("after DownAfter without heartbeats: %s, want unhealthy", got)
	}
	if h.reason != ReasonUDPBlocked || !strings.Contains(h.detail, "UDP 6784 blocked") {
		t.Fatalf("reason %q detail %q, want udp-blocked mentioning UDP 6784", h.reason, h.detail)
	}
}

func TestHealthDownAfterSilenceAndBackAfterHoldoff(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	h := newHealth(testTiming, 6784, c.now())
	run(h, c, 2*time.Second, true)
	if h.state != StateHealthy {
		t.Fatalf("state %s, want healthy", h.state)
	}
	// Two silent seconds stay within DownAfter: no change.
	for _, s := range run(h, c, 2*time.Second, false) {
		if s != StateHealthy {
			t.Fatalf("went %s within DownAfter", s)
		}
	}
	run(h, c, 2*time.Second, false)
	if h.state != StateUnhealthy || h.reason != ReasonUDPBlocked {
		t.Fatalf("after silence: %s/%s, want unhealthy/udp-blocked", h.state, h.reason)
	}
	if h.holdoff != 8*time.Second {
		t.Fatalf("holdoff %v, want doubled to 8s", h.holdoff)
	}
	// Heartbeats pass again: recovering, and healthy only after the hold-off of them.
	states := run(h, c, 7*time.Second, true)
	for _, s := range states {
		if s != StateUnhealthy {
			t.Fatalf("returned to %s before the hold-off passed: %v", s, states)
		}
	}
	if h.reason != ReasonRecovering {
		t.Fatalf("reason %q while heartbeats pass in hold-off, want recovering", h.reason)
	}
	run(h, c, 2*time.Second, true)
	if h.state != StateHealthy {
		t.Fatalf("state %s after the hold-off, want healthy", h.state)
	}
}

// A path that works for a few seconds and fails again, over and over, must settle on
// sleeve instead of flipping the traffic at every cycle.
func TestHealthNoFlapping(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	h := newHealth(testTiming, 6784, c.now())
	run(h, c, 2*time.Second, true)
	changes := 0
	prev := h.state
	for cycle := 0; cycle < 20; cycle++ {
		for _, s := range append(run(h, c, 10*time.Second, true), run(h, c, 5*time.Second, false)...) {
			if s != prev {
				changes++
				prev = s
			}
		}
	}
	// 20 cycles of 10s up / 5s down: without hysteresis 40 changes. The hold-off doubles
	// (8s, then 16s) past the 10s good stretches after two failures, and the pair stays on
	// sleeve.
	if changes > 4 {
		t.Fatalf("%d state changes over 20 flapping cycles, want at most 4", changes)
	}
	if h.state != StateUnhealthy || h.holdoff != 16*time.Second {
		t.Fatalf("state %s holdoff %v, want unhealthy with a 16s hold-off", h.state, h.holdoff)
	}
	// A stable path returns after the hold-off, and a minute of health resets it.
	run(h, c, h.holdoff+time.Second, true)
	if h.state != StateHealthy {
		t.Fatalf("stable path: %s, want healthy", h.state)
	}
	run(h, c, testTiming.StableAfter+time.Second, true)
	if h.holdoff != testTiming.RecoverAfter {
		t.Fatalf("holdoff %v after a stable minute, want reset to %v", h.holdoff, testTiming.RecoverAfter)
	}
}

func TestHealthReasons(t *testing.T) {
	for _, tc := range []struct {
		name   string
		feed   func(h *health, now time.Time)
		reason Reason
		detail string
	}{
		{"mtu", func(h *health, now time.Time) { h.observe(evAckSmall, now); h.observe(evRecvSmall, now) }, ReasonMTU, "MTU"},
		{"nat", func(h *health, now time.Time) { h.observe(evRecvFull, now); h.observe(evNAT, now) }, ReasonNAT, "NAT"},
		{"one way out", func(h *health, now time.Time) { h.observe(evAckFull, now) }, ReasonUDPBlocked, "not back"},
		{"one way in", func(h *health, now time.Time) { h.observe(evRecvFull, now) }, ReasonUDPBlocked, "ours do not"},
		{"nothing", func(*health, time.Time) {}, ReasonUDPBlocked, "no heartbeat passed for 3s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &clock{t: time.Unix(1000, 0)}
			h := newHealth(testTiming, 6784, c.now())
			for i := 0; i < 4; i++ {
				now := c.add(time.Second)
				tc.feed(h, now)
				h.step(now)
			}
			if h.state != StateUnhealthy || h.reason != tc.reason || !strings.Contains(h.detail, tc.detail) {
				t.Fatalf("got %s/%s %q, want unhealthy/%s containing %q", h.state, h.reason, h.detail, tc.reason, tc.detail)
			}
		})
	}
}

func TestTimingDefaults(t *testing.T) {
	d := Timing{}.withDefaults()
	if d.Interval != 500*time.Millisecond || d.DownAfter != 3*time.Second || d.RecoverAfter != 3*time.Second ||
		d.MaxHoldoff != 2*time.Minute || d.StableAfter != time.Minute {
		t.Fatalf("defaults %+v", d)
	}
	if got := (Timing{RecoverAfter: time.Hour, MaxHoldoff: time.Second}).withDefaults().MaxHoldoff; got != time.Hour {
		t.Fatalf("MaxHoldoff below RecoverAfter: got %v, want raised to RecoverAfter", got)
	}
}

func TestHoldoffCapped(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	h := newHealth(testTiming, 6784, c.now())
	// Long good stretches (past every hold-off) with short failures: the hold-off doubles
	// at each failure and stops at MaxHoldoff.
	var holdoffs []time.Duration
	for i := 0; i < 5; i++ {
		run(h, c, 40*time.Second, true)
		if h.state != StateHealthy {
			t.Fatalf("cycle %d: %s after 40s of heartbeats", i, h.state)
		}
		run(h, c, 4*time.Second, false)
		holdoffs = append(holdoffs, h.holdoff)
	}
	want := []time.Duration{8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second, 30 * time.Second}
	for i := range want {
		if holdoffs[i] != want[i] {
			t.Fatalf("hold-offs %v, want %v", holdoffs, want)
		}
	}
}

func TestStatusInfo(t *testing.T) {
	for _, tc := range []struct {
		s    PeerStatus
		want string
	}{
		{PeerStatus{State: StateHealthy, Active: true}, "fastdp"},
		{PeerStatus{State: StateUnhealthy, Reason: ReasonUDPBlocked, Detail: "no heartbeat passed for 3s: UDP 6784 blocked?"},
			"sleeve: udp-blocked: no heartbeat passed for 3s: UDP 6784 blocked?"},
		{Unavailable(ReasonDisabled, nil), "sleeve: disabled: fastdp disabled by --no-fastdp"},
		{Unavailable(ReasonNoKernel, ErrNoKernelSupport), "sleeve: no-kernel-support: the kernel cannot create the VXLAN device: fastdp: no kernel VXLAN support"},
	} {
		if got := tc.s.Info(); got != tc.want {
			t.Errorf("Info() = %q, want %q", got, tc.want)
		}
	}
}
