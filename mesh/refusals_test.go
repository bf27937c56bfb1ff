package mesh

import (
	"errors"
	"fmt"
	"testing"
)

// TestRefusalCounting: each refusal is counted under the label refusalReason gives it, once,
// and only the reasons of weave_mesh_refused_total are counted.
func TestRefusalCounting(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string // "" : not counted
	}{
		{fmt.Errorf("x: %w", ErrWrongPassword), "wrong_password"},
		{ErrPasswordMismatch, "password_mismatch"},
		{ErrVersionMismatch, "version"},
		{fmt.Errorf("%w after 1s", ErrHandshakeTimeout), "timeout"},
		{errBadGreeting, "bad_greeting"},
		{ErrBadHandshake, "bad_handshake"},
		{ErrMessageTooLarge, "bad_handshake"}, // during the handshake
		{errRateLimited, "rate_limited"},
		{fmt.Errorf("%w (1 from this address)", errTooManyPending), "too_many_handshakes"},
		{fmt.Errorf("%w: %w", errNameInUse, ErrDuplicateConn), "name_in_use"},
		{errors.New("connection reset by peer"), "aborted"},
		{ErrDuplicateConn, ""},
		{ErrConnectToSelf, ""},
		{ErrConnLimit, ""},
	} {
		var cc connCounters
		cc.count(tc.err)
		got := cc.reasons()
		if len(got) != len(refusedReasons) {
			t.Fatalf("reasons() has %d labels, want %d", len(got), len(refusedReasons))
		}
		if _, ok := got[tc.want]; tc.want != "" && !ok {
			t.Fatalf("%v: no label %s", tc.err, tc.want)
		}
		for reason, n := range got {
			want := uint64(0)
			if reason == tc.want {
				want = 1
			}
			if n != want {
				t.Errorf("%v: %s = %d, want %d", tc.err, reason, n, want)
			}
		}
	}
	var nilCC *connCounters
	nilCC.count(ErrWrongPassword) // a nil *connCounters counts nothing and does not panic
}
