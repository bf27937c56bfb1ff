package mesh

// The accept loop and the refusal of inbound connections: what each refusal is called in
// logs and metrics. Admission control itself is in admission.go.

import (
	"errors"
	"log/slog"
	"net"
	"time"
)

// acceptRetry: the pause after a failed Accept (out of file descriptors, say).
const acceptRetry = 50 * time.Millisecond

// acceptLoop hands each accepted connection to admission control and never waits itself:
// a flood from one address is refused at once and real peers are accepted in between.
func (r *Router) acceptLoop(ln net.Listener) {
	defer r.wg.Done()
	for {
		nc, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || r.ctx.Err() != nil {
				return
			}
			r.log.Warn("accept failed", "err", err)
			select {
			case <-r.ctx.Done():
				return
			case <-time.After(acceptRetry):
			}
			continue
		}
		release, err := r.admit.admit(nc.RemoteAddr(), time.Now())
		if err != nil {
			nc.Close()
			if errors.Is(err, errRateLimited) {
				r.counters.RateLimited.Add(1)
			} else {
				r.counters.TooManyHandshakes.Add(1)
			}
			r.logRefused(nc.RemoteAddr().String(), err)
			continue
		}
		r.startHandshake(nc, false, "", release)
	}
}

// logRefused logs an inbound connection we refused, at most a few lines per reason and
// interval, so a flood cannot fill the disk (the counters have the totals).
func (r *Router) logRefused(addr string, err error) {
	reason := refusalReason(err)
	r.refuseLog.Log(slog.LevelWarn, reason, "connection refused", "reason", reason, "addr", addr, "err", err)
}

// refusalReason names why an inbound connection was refused: the reason label of
// weave_mesh_refused_total where there is one (connCounters.reasons), and the key of its
// rate-limited log line.
func refusalReason(err error) string {
	switch {
	case errors.Is(err, ErrDuplicateConn) && !errors.Is(err, errNameInUse):
		return "duplicate"
	case errors.Is(err, ErrConnectToSelf):
		return "self"
	case errors.Is(err, ErrConnLimit):
		return "conn_limit"
	case errors.Is(err, errRateLimited):
		return "rate_limited"
	case errors.Is(err, errTooManyPending):
		return "too_many_handshakes"
	case errors.Is(err, errNameInUse):
		return "name_in_use"
	case errors.Is(err, ErrWrongPassword):
		return "wrong_password"
	case errors.Is(err, ErrPasswordMismatch):
		return "password_mismatch"
	case errors.Is(err, ErrVersionMismatch):
		return "version"
	case errors.Is(err, ErrHandshakeTimeout):
		return "timeout"
	case errors.Is(err, errBadGreeting):
		return "bad_greeting"
	case errors.Is(err, ErrBadHandshake), errors.Is(err, ErrMessageTooLarge):
		return "bad_handshake"
	default:
		return "aborted"
	}
}
