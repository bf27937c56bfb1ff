package sleeve

import (
	"testing"
	"time"
)

// TestCheckPMTUFindsSilentShrink: while data flows, each heartbeat probes the MTU in use;
// when the path silently carries only 1280 now, the probe of the old size is lost
// probeAttempts times and the search settles on 1280. Without data nothing is probed, and a
// check that confirms the MTU does not count as the periodic re-probe (which alone can find
// a path that grew).
func TestCheckPMTUFindsSilentShrink(t *testing.T) {
	s, _, _ := fuzzSleeve(t)
	n := (*s.peers.Load())[fuzzPlainPeer]
	n.send.ctl = make([]byte, maxDatagram+sealedHeaderLen+tagLen) // as routineSend does
	n.send.Lock()
	defer n.send.Unlock()
	n.path.maxPayload.Store(int32(1500 - n.ipOverhead()))
	n.path.established.Store(true)
	n.send.probe.verified = true
	reprobed := time.Now().Add(-time.Second)
	n.send.lastMTU = reprobed

	n.checkPMTU()
	if n.send.probe.active {
		t.Fatal("probed an idle connection")
	}

	// A path that still carries the MTU: one probe, acked; nothing changes.
	n.send.sentData = true
	n.checkPMTU()
	if p := n.send.probe; !p.active || p.cand != 1500 {
		t.Fatalf("check probe %+v, want one of 1500", p)
	}
	n.onProbeAck(1500)
	if n.send.probe.active || int(n.path.maxPayload.Load()) != 1500-n.ipOverhead() || s.stats.pmtuShrunk.Load() != 0 {
		t.Fatalf("a confirmed MTU changed something: probe %+v, payload %d", n.send.probe, n.path.maxPayload.Load())
	}
	if !n.send.lastMTU.Equal(reprobed) {
		t.Error("a check postponed the periodic re-probe")
	}

	// The path silently drops everything above 1280.
	n.send.sentData = true
	n.checkPMTU()
	probes := 0
	for n.send.probe.active && probes < 100 {
		probes++
		if c := n.send.probe.cand; c <= 1280 {
			n.onProbeAck(c)
		} else {
			n.onProbeTimeout()
		}
	}
	if n.send.probe.active {
		t.Fatalf("the search did not end: %+v", n.send.probe)
	}
	if got := int(n.path.maxPayload.Load()) + n.ipOverhead(); got != 1280 {
		t.Fatalf("path MTU %d after the check, want 1280", got)
	}
	if s.stats.pmtuShrunk.Load() != 1 {
		t.Errorf("pmtuShrunk = %d, want 1", s.stats.pmtuShrunk.Load())
	}
	t.Logf("%d probe rounds", probes)
}
