package mesh

// The accept loop: each inbound connection goes through admission control (admission.go),
// then the handshake; refusals are counted and logged at a bounded rate (refusals.go).

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
			r.counters.count(err)
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
