package sleeve

import (
	"errors"
	"syscall"
	"time"

	"github.com/weavemesh/weave/internal/logx"
	"github.com/weavemesh/weave/udp"
)

// Path MTU discovery: the kernel's value first, then a binary search by probes the peer
// acknowledges, as Weave did; a send failing with EMSGSIZE restarts it.

const (
	// minMTU is the IP MTU every IPv4 path carries (RFC 791 576; we never probe below).
	minMTU = 576
	// probeAttempts is how often one probe size is tried before it is taken as too big: a
	// probe lost to congestion must not shrink a busy path's MTU.
	probeAttempts = 3
	// probeSlack ends the MTU search once the window is this small: 0 finds the exact MTU
	// in about ten probes (log2 of 1500-576).
	probeSlack = 0
)

type probeState struct {
	active   bool
	lo, hi   int // lo is known good, hi is the largest candidate left
	cand     int
	attempts int
	verified bool
	// check: this search started from the MTU in use to confirm it (checkPMTU), not from
	// the kernel's; its end does not count as the periodic re-probe, which alone can find
	// a path that grew.
	check bool
	timer *time.Timer
}

func (n *neighbour) sendFailed(err error) {
	if errors.Is(err, syscall.EMSGSIZE) {
		// The kernel learned a smaller path MTU (ICMP): take it at once, then verify.
		if k := n.kernelPMTU(); k > 0 && k-n.ipOverhead() < int(n.path.maxPayload.Load()) {
			n.path.maxPayload.Store(int32(k - n.ipOverhead()))
			n.s.log.Info("path MTU shrank", logx.KeyPeer, n.name.String(), logx.KeyPMTU, k)
		}
		n.startProbe()
		return
	}
	if !isClosed(err) {
		n.s.log.Debug("sleeve send failed", logx.KeyPeer, n.name.String(), logx.KeyErr, err)
	}
}

// kernelPMTU is the kernel's idea of the path MTU (interface MTU or what ICMP taught it).
func (n *neighbour) kernelPMTU() int {
	ep := n.path.ep.Load()
	p, ok := n.s.bind.(udp.PathMTU)
	if ep == nil || !ok {
		return 1500
	}
	m, err := p.PathMTU(*ep)
	if err != nil || m <= 0 {
		return 1500
	}
	return min(m, maxDatagram+udpIPv4Overhead)
}

// startProbe begins a search for the path MTU: the kernel's value first (the usual answer),
// then a binary search down to minMTU, as Weave did.
func (n *neighbour) startProbe() {
	if n.send.probe.active {
		return
	}
	hi := n.kernelPMTU()
	n.send.probe = probeState{active: true, lo: minMTU, hi: hi, cand: hi, verified: n.send.probe.verified, timer: n.send.probe.timer}
	n.sendProbe()
}

// checkPMTU confirms, once a heartbeat while data flows, that the path still carries our
// MTU: one probe of that size. A path MTU can shrink mid-flow with nothing telling us (ICMP
// filtered, or a bridge dropping larger frames silently); every full-size datagram then
// vanishes, TCP stalls in retransmission back-off, and no other signal reaches us (the peer
// sees no pieces, so it reports no lost super-frames). Without this the stall lasts until
// the periodic re-probe (ReprobeEvery, 15 s); with it, about a heartbeat plus the search.
// When the probe is lost probeAttempts times the search goes on below it. Must hold n.send.
func (n *neighbour) checkPMTU() {
	busy := n.send.sentData
	n.send.sentData = false
	p := &n.send.probe
	if !busy || p.active || !p.verified || !n.path.established.Load() {
		return
	}
	cur := int(n.path.maxPayload.Load()) + n.ipOverhead()
	if cur <= minMTU {
		return
	}
	*p = probeState{active: true, check: true, lo: minMTU, hi: cur, cand: cur, verified: true, timer: p.timer}
	n.sendProbe()
}

func (n *neighbour) sendProbe() {
	n.send.probe.attempts++
	if err := n.sendControl(ctlProbe, uint16(min(n.send.probe.cand, 0xffff)), 0); errors.Is(err, syscall.EMSGSIZE) {
		// Too big for the kernel already: it knows better.
		if k := n.kernelPMTU(); k < n.send.probe.cand {
			n.send.probe.hi, n.send.probe.cand, n.send.probe.attempts = k, k, 0
			n.sendProbe()
			return
		}
	}
	n.send.probe.timer.Reset(n.s.cfg.ProbeTimeout)
}

func (n *neighbour) onProbeAck(size int) {
	p := &n.send.probe
	if !p.active || size != p.cand {
		return // late ack of an earlier candidate
	}
	p.timer.Stop()
	p.lo = size
	if p.cand == p.hi || p.hi-p.lo <= probeSlack {
		n.finishProbe(p.lo)
		return
	}
	p.cand, p.attempts = (p.lo+p.hi+1)/2, 0
	n.sendProbe()
}

func (n *neighbour) onProbeTimeout() {
	p := &n.send.probe
	if !p.active {
		return
	}
	if p.attempts < probeAttempts {
		n.sendProbe()
		return
	}
	p.hi = p.cand - 1
	if p.hi-p.lo <= probeSlack {
		n.finishProbe(p.lo)
		return
	}
	p.cand, p.attempts = (p.lo+p.hi+1)/2, 0
	n.sendProbe()
}

func (n *neighbour) finishProbe(mtu int) {
	check := n.send.probe.check
	n.send.probe.active, n.send.probe.check = false, false
	n.send.probe.verified = true
	if !check {
		n.send.lastMTU = time.Now()
	}
	old := n.path.maxPayload.Swap(int32(mtu - n.ipOverhead()))
	if int(old) != mtu-n.ipOverhead() {
		if check {
			n.s.stats.pmtuShrunk.Add(1)
		}
		n.s.log.Info("effective MTU verified", logx.KeyPeer, n.name.String(), logx.KeyPMTU, mtu, logx.KeyMTU, n.maxFrame()-14)
	}
	n.tick()
}
