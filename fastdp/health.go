package fastdp

import (
	"fmt"
	"time"
)

// State is where a peer stands on the kernel path.
type State string

const (
	// StateOff: this pair never uses fastdp (see the Reason); it stays on sleeve.
	StateOff State = "off"
	// StateProbing: heartbeats are being sent but have not yet passed both ways.
	StateProbing State = "probing"
	// StateHealthy: heartbeats pass both ways at full size; the kernel carries the traffic.
	StateHealthy State = "healthy"
	// StateUnhealthy: heartbeats stopped or never passed; the pair is on sleeve until they
	// pass again for the hold-off time.
	StateUnhealthy State = "unhealthy"
)

// Reason says why a peer is not (or not yet) on fastdp. The values are stable: status,
// metrics labels and scripts may match on them.
type Reason string

const (
	ReasonNone Reason = ""
	// ReasonProbing: the first heartbeats have not come back yet.
	ReasonProbing Reason = "probing"
	// ReasonUDPBlocked: no heartbeat passes in at least one direction (the VXLAN port is
	// filtered, or the peer is unreachable on it).
	ReasonUDPBlocked Reason = "udp-blocked"
	// ReasonMTU: small heartbeats pass both ways, full-size ones do not: the underlay path
	// MTU is below the VXLAN MTU plus encapsulation.
	ReasonMTU Reason = "mtu"
	// ReasonNAT: a heartbeat's sender address differs from the address we reach the peer
	// at; VXLAN has no hole punching, so the NATed side is unreachable.
	ReasonNAT Reason = "nat"
	// ReasonRecovering: heartbeats pass again; the pair waits out the hold-off before it
	// returns to fastdp, so a flapping path does not flap the traffic.
	ReasonRecovering Reason = "recovering"
	// ReasonEncryption: the pair needs encryption and fastdp has no IPsec yet, so it stays
	// on the encrypted sleeve (never plaintext).
	ReasonEncryption Reason = "encryption"
	// ReasonPeerNoFastdp: the peer does not offer fastdp (old version, --no-fastdp, or no
	// kernel support there).
	ReasonPeerNoFastdp Reason = "peer-without-fastdp"
	// ReasonMismatch: the peer's fastdp uses another UDP port or VNI.
	ReasonMismatch Reason = "config-mismatch"
	// ReasonDisabled: fastdp is off on this host (--no-fastdp). Set by the daemon, which
	// then never creates a FastDP.
	ReasonDisabled Reason = "disabled"
	// ReasonNoKernel: the kernel cannot create the VXLAN device (New returned
	// ErrNoKernelSupport). Set by the daemon.
	ReasonNoKernel Reason = "no-kernel-support"
)

// PeerStatus is the state of one peer on the kernel path, for the overlay switch and status.
type PeerStatus struct {
	Peer   string // peer name
	ConnID uint64
	Addr   string // underlay address of the peer's VXLAN endpoint
	State  State
	Reason Reason
	// Detail is a human sentence for status ("no heartbeat passed for 3s: UDP 6784
	// blocked?"); not stable.
	Detail string
	// Active: the kernel carries this pair's traffic (flood and MAC entries installed).
	Active bool
	// Holdoff is how long heartbeats must pass before an unhealthy pair returns; it doubles
	// with each failure in a row (capped), so a flapping path settles on sleeve.
	Holdoff time.Duration
	// Since is when State last changed.
	Since time.Time
	// Transitions counts changes into and out of healthy.
	Transitions uint64
}

// Info is the one-line summary for a connection's "info" in status: "fastdp", or the
// reason the pair is on sleeve.
func (s PeerStatus) Info() string {
	if s.Active {
		return "fastdp"
	}
	if s.Detail == "" {
		return "sleeve: " + string(s.Reason)
	}
	return "sleeve: " + string(s.Reason) + ": " + s.Detail
}

// Unavailable is the status of every pair when this host runs without fastdp, for the
// daemon to show: r is ReasonDisabled (--no-fastdp), ReasonEncryption (a password mesh:
// no kernel path may accept unauthenticated frames) or ReasonNoKernel (New failed with
// ErrNoKernelSupport, or the guard cannot be installed; err says how).
func Unavailable(r Reason, err error) PeerStatus {
	s := PeerStatus{State: StateOff, Reason: r}
	switch r {
	case ReasonDisabled:
		s.Detail = "fastdp disabled by --no-fastdp"
	case ReasonNoKernel:
		s.Detail = "the kernel cannot create the VXLAN device"
	case ReasonEncryption:
		s.Detail = "the mesh has a password and fastdp has no IPsec yet: no VXLAN device, every pair stays on the encrypted sleeve"
	}
	if err != nil {
		s.Detail += ": " + err.Error()
	}
	return s
}

// Timing are the heartbeat and hysteresis parameters.
type Timing struct {
	// Interval between heartbeat rounds (each round is one small and one full-size frame,
	// replicated by the kernel to every peer). Default 500ms.
	Interval time.Duration
	// DownAfter: a direction without a heartbeat for this long is broken. Default 3s.
	DownAfter time.Duration
	// RecoverAfter: the first hold-off; heartbeats must pass both ways continuously this
	// long before an unhealthy pair returns to fastdp. Default 3s.
	RecoverAfter time.Duration
	// MaxHoldoff caps the doubling hold-off. Default 2m.
	MaxHoldoff time.Duration
	// StableAfter: a pair healthy this long has its hold-off reset. Default 1m.
	StableAfter time.Duration
}

func (t Timing) withDefaults() Timing {
	if t.Interval <= 0 {
		t.Interval = 500 * time.Millisecond
	}
	if t.DownAfter <= 0 {
		t.DownAfter = 3 * time.Second
	}
	if t.RecoverAfter <= 0 {
		t.RecoverAfter = 3 * time.Second
	}
	if t.MaxHoldoff <= 0 {
		t.MaxHoldoff = 2 * time.Minute
	}
	if t.MaxHoldoff < t.RecoverAfter {
		t.MaxHoldoff = t.RecoverAfter
	}
	if t.StableAfter <= 0 {
		t.StableAfter = time.Minute
	}
	return t
}

// health is the per-peer heartbeat state machine. It is pure: every input carries the
// time, so tests drive it with a fake clock. It is not safe for concurrent use.
//
//	probing --both ways full size--> healthy --a direction silent DownAfter--> unhealthy
//	probing --nothing for DownAfter--> unhealthy
//	unhealthy --both ways full size, continuously for holdoff--> healthy
//
// Each healthy->unhealthy doubles holdoff (up to MaxHoldoff); StableAfter of health resets it.
type health struct {
	t     Timing
	port  int
	state State
	since time.Time
	start time.Time

	// Last time each kind of evidence arrived; zero: never.
	ackFull, ackSmall   time.Time // our heartbeat came back acknowledged (we -> peer)
	recvFull, recvSmall time.Time // the peer's heartbeat reached us (peer -> we)
	nat                 time.Time // an address mismatch was seen (by us or reported by the peer)

	okSince     time.Time // start of the current run of full-size both-ways success
	holdoff     time.Duration
	transitions uint64
	reason      Reason
	detail      string
}

func newHealth(t Timing, port int, now time.Time) *health {
	t = t.withDefaults()
	return &health{t: t, port: port, state: StateProbing, since: now, start: now,
		holdoff: t.RecoverAfter, reason: ReasonProbing, detail: "waiting for the first heartbeats"}
}

// Evidence kinds fed to observe.
const (
	evAckFull = iota
	evAckSmall
	evRecvFull
	evRecvSmall
	evNAT
)

func (h *health) observe(ev int, now time.Time) {
	switch ev {
	case evAckFull:
		h.ackFull = now
		h.ackSmall = now // a full-size frame passing proves the small one would
	case evAckSmall:
		h.ackSmall = now
	case evRecvFull:
		h.recvFull = now
		h.recvSmall = now
	case evRecvSmall:
		h.recvSmall = now
	case evNAT:
		h.nat = now
	}
}

func (h *health) fresh(t, now time.Time) bool {
	return !t.IsZero() && now.Sub(t) < h.t.DownAfter
}

// step re-evaluates the state at now and reports whether State changed.
func (h *health) step(now time.Time) (changed bool) {
	fullOK := h.fresh(h.ackFull, now) && h.fresh(h.recvFull, now)
	if fullOK {
		if h.okSince.IsZero() {
			h.okSince = now
		}
	} else {
		h.okSince = time.Time{}
	}
	prev := h.state
	switch h.state {
	case StateProbing:
		if fullOK {
			h.set(StateHealthy, now)
		} else if now.Sub(h.start) >= h.t.DownAfter {
			h.set(StateUnhealthy, now)
		}
	case StateHealthy:
		if !fullOK {
			h.set(StateUnhealthy, now)
			h.holdoff = min(h.holdoff*2, h.t.MaxHoldoff)
		} else if now.Sub(h.since) >= h.t.StableAfter {
			h.holdoff = h.t.RecoverAfter
		}
	case StateUnhealthy:
		if fullOK && now.Sub(h.okSince) >= h.holdoff {
			h.set(StateHealthy, now)
		}
	}
	h.explain(now, fullOK)
	return h.state != prev
}

func (h *health) set(s State, now time.Time) {
	if s == StateHealthy || h.state == StateHealthy {
		h.transitions++
	}
	h.state, h.since = s, now
}

// explain sets reason and detail from the evidence.
func (h *health) explain(now time.Time, fullOK bool) {
	switch {
	case h.state == StateHealthy:
		h.reason, h.detail = ReasonNone, ""
	case fullOK:
		h.reason = ReasonRecovering
		h.detail = fmt.Sprintf("heartbeats pass again; back to fastdp after %v of them", h.holdoff)
	case h.fresh(h.nat, now):
		h.reason = ReasonNAT
		h.detail = "NAT between the peers: VXLAN cannot reach the NATed side"
	case h.fresh(h.ackSmall, now) && h.fresh(h.recvSmall, now):
		h.reason = ReasonMTU
		h.detail = "small heartbeats pass, full-size ones do not: the underlay path MTU is too small for the VXLAN MTU"
	case h.state == StateProbing:
		h.reason, h.detail = ReasonProbing, "waiting for the first heartbeats"
	default:
		h.reason = ReasonUDPBlocked
		out, in := h.fresh(h.ackSmall, now), h.fresh(h.recvSmall, now)
		switch {
		case out && !in:
			h.detail = fmt.Sprintf("heartbeats pass to the peer but not back: UDP %d blocked one way?", h.port)
		case in && !out:
			h.detail = fmt.Sprintf("heartbeats arrive from the peer but ours do not: UDP %d blocked one way?", h.port)
		default:
			h.detail = fmt.Sprintf("no heartbeat passed for %v: UDP %d blocked?", h.t.DownAfter, h.port)
		}
	}
}
