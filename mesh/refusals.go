package mesh

// Why connections are refused: the reason of each refusal, as logged and as counted in
// weave_mesh_refused_total{reason}.

import (
	"errors"
	"sync/atomic"
)

// connCounters counts refused handshakes and fatal connection errors by reason, for metrics.
// Share one across all connections; the zero value is ready. A nil *connCounters counts
// nothing. The Router also counts here the connections it refuses around the handshake:
// before it (rate limited, too many handshakes) and after it (name in use).
type connCounters struct {
	WrongPassword     atomic.Uint64
	PasswordMismatch  atomic.Uint64
	VersionMismatch   atomic.Uint64
	BadGreeting       atomic.Uint64
	BadHandshake      atomic.Uint64
	HandshakeTimeout  atomic.Uint64
	MessageTooLarge   atomic.Uint64
	ReplayOrForgery   atomic.Uint64
	NameInUse         atomic.Uint64
	RateLimited       atomic.Uint64
	TooManyHandshakes atomic.Uint64
	// Aborted: the handshake failed for another reason (the peer closed or reset it).
	Aborted atomic.Uint64
}

// refusedReasons are the reason labels counted in connCounters, for the
// weave_mesh_refused_total{reason} metric.
var refusedReasons = []string{
	"wrong_password", "password_mismatch", "version", "bad_greeting", "bad_handshake", "timeout",
	"message_too_large", "replay_or_forgery", "name_in_use", "rate_limited",
	"too_many_handshakes", "aborted",
}

// counter returns the counter of a reason label (refusedReasons), nil for a reason that is
// not counted here (routine refusals: duplicate, self, conn_limit).
func (cc *connCounters) counter(reason string) *atomic.Uint64 {
	switch reason {
	case "wrong_password":
		return &cc.WrongPassword
	case "password_mismatch":
		return &cc.PasswordMismatch
	case "version":
		return &cc.VersionMismatch
	case "bad_greeting":
		return &cc.BadGreeting
	case "bad_handshake":
		return &cc.BadHandshake
	case "timeout":
		return &cc.HandshakeTimeout
	case "message_too_large":
		return &cc.MessageTooLarge
	case "replay_or_forgery":
		return &cc.ReplayOrForgery
	case "name_in_use":
		return &cc.NameInUse
	case "rate_limited":
		return &cc.RateLimited
	case "too_many_handshakes":
		return &cc.TooManyHandshakes
	case "aborted":
		return &cc.Aborted
	}
	return nil
}

// reasons returns the counters by reason label (snake_case).
func (cc *connCounters) reasons() map[string]uint64 {
	m := make(map[string]uint64, len(refusedReasons))
	for _, reason := range refusedReasons {
		m[reason] = cc.counter(reason).Load()
	}
	return m
}

// count counts a refusal for err under refusalReason(err), if that reason is counted.
func (cc *connCounters) count(err error) {
	if cc == nil {
		return
	}
	if c := cc.counter(refusalReason(err)); c != nil {
		c.Add(1)
	}
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
