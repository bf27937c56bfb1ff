package netlab

import (
	"strings"
	"testing"
	"time"
)

func TestNetemArgs(t *testing.T) {
	for _, tc := range []struct {
		n    Netem
		want string
		err  bool
	}{
		{n: Netem{LossPercent: 5}, want: "netem loss 5%"},
		{n: Netem{Delay: 20 * time.Millisecond, Jitter: 5 * time.Millisecond, ReorderPercent: 25},
			want: "netem delay 20000us 5000us reorder 25%"},
		{n: Netem{LossPercent: 0.5, DuplicatePercent: 1}, want: "netem loss 0.5% duplicate 1%"},
		{n: Netem{LossPercent: 101}, err: true},
		{n: Netem{LossPercent: -1}, err: true},
		{n: Netem{ReorderPercent: 10}, err: true},                                    // reordering without delay
		{n: Netem{Delay: time.Millisecond, Jitter: 2 * time.Millisecond}, err: true}, // jitter above delay
		{n: Netem{Delay: -time.Millisecond}, err: true},
	} {
		got, err := tc.n.args()
		if tc.err {
			if err == nil {
				t.Errorf("%+v: accepted as %q", tc.n, got)
			}
			continue
		}
		if err != nil || strings.Join(got, " ") != tc.want {
			t.Errorf("%+v: got %q, %v; want %q", tc.n, got, err, tc.want)
		}
	}
}

func TestSetNetemRefusesForeignHost(t *testing.T) {
	var l Lab
	if err := l.SetNetem(&Host{}, Netem{LossPercent: 1}); err == nil {
		t.Fatal("a host of another lab was accepted")
	}
	if err := l.SetNetem(nil, Netem{}); err == nil {
		t.Fatal("a nil host was accepted")
	}
}
