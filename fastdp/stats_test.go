package fastdp

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/testutil"
	"github.com/weavemesh/weave/overlay"
)

// statlessKernel hides LinkStats: a Kernel that cannot read its device's counters.
type statlessKernel struct{ Kernel }

// The overlay counters are the kernel's (data and heartbeats), counted from New: what the
// device carried before this FastDP is not ours to report.
func TestStatsCountWhatTheKernelCarried(t *testing.T) {
	fn := NewFakeNet()
	k := fn.Kernel(netip.MustParseAddr("10.201.0.1"), 1450)
	k.Carry(LinkStats{RxFrames: 1000, RxBytes: 1e6, TxFrames: 1000, TxBytes: 1e6, TxDropped: 9})
	f, err := New(Config{Name: 1, Kernel: k, Timing: fastTiming, VNI: 42, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if st := f.Stats(); !st.KernelCounted || st.Kernel != (LinkStats{}) {
		t.Fatalf("fresh stats %+v, want kernel counted from zero", st)
	}
	k.Carry(LinkStats{RxFrames: 10, RxBytes: 14000, RxDropped: 1, TxFrames: 7, TxBytes: 9000, TxDropped: 2})
	st := f.Stats()
	want := LinkStats{RxFrames: 10, RxBytes: 14000, RxDropped: 1, TxFrames: 7, TxBytes: 9000, TxDropped: 2}
	if st.Kernel != want {
		t.Fatalf("kernel counters %+v, want %+v", st.Kernel, want)
	}
	st.BadFrames, st.Unknown, st.KernelErrors = 3, 4, 5
	if got, want := st.Overlay(), (overlay.Stats{FramesIn: 10, BytesIn: 14000, DropsIn: 1 + 3 + 4,
		FramesOut: 7, BytesOut: 9000, DropsOut: 2 + 5}); got != want {
		t.Fatalf("overlay stats %+v, want %+v", got, want)
	}

	// After Close the device cannot be read any more (the real one's netlink handle is
	// gone): the last figures stand.
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := k.LinkStats(); err == nil {
		t.Fatal("the closed fake still reads its counters")
	}
	if got := f.Stats().Kernel; got != want {
		t.Fatalf("kernel counters after Close %+v, want the last %+v", got, want)
	}
}

// Heartbeats cross the device too, so they are among the kernel's frames.
func TestStatsIncludeHeartbeats(t *testing.T) {
	_, a, b := pair(t)
	waitState(t, a, b, StateHealthy, ReasonNone, true)
	testutil.Eventually(t, 2*time.Second, "heartbeats in the kernel counters", func() error {
		st := a.f.Stats()
		if st.Kernel.TxFrames == 0 || st.Kernel.RxFrames == 0 || st.Kernel.TxBytes < 1450 {
			return fmt.Errorf("kernel counters %+v after %d beats sent, %d received", st.Kernel, st.BeatsSent, st.BeatsReceived)
		}
		return nil
	})
}

// A Kernel without counters (another implementation) reports heartbeats, as before.
func TestStatsWithoutKernelCounters(t *testing.T) {
	fn := NewFakeNet()
	k := fn.Kernel(netip.MustParseAddr("10.201.0.1"), 1450)
	f, err := New(Config{Name: 1, Kernel: statlessKernel{k}, Timing: fastTiming, VNI: 42, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	k.Carry(LinkStats{RxFrames: 10, TxFrames: 7})
	st := f.Stats()
	if st.KernelCounted || st.Kernel != (LinkStats{}) {
		t.Fatalf("stats %+v from a kernel without counters", st)
	}
	st.BeatsReceived, st.BeatsSent = 2, 3
	if got := st.Overlay(); got.FramesIn != 2 || got.FramesOut != 3 || got.BytesIn != 0 {
		t.Fatalf("overlay stats %+v, want the heartbeats", got)
	}
}
