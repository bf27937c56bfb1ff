package fastdp

// The heartbeat loop: one goroutine sends a round of beats through the kernel path and
// steps every pair's state machine (so OnChange calls are ordered), one reads the beats
// that came through the kernel and acknowledges them over the mesh, and OverlayControl
// takes the acknowledgements. The wire format is in wire.go, the state machine in health.go.

import (
	"net/netip"
	"time"

	"github.com/weavemesh/weave/internal/logx"
	"github.com/weavemesh/weave/mesh"
)

func (f *FastDP) activateLocked(p *peer) {
	p.active = true
	f.activations.Add(1)
	f.kerr(f.k.SetFloodRemote(p.Addr, true))
	f.moveMACsLocked(p, netip.Addr{}, p.Addr)
}

func (f *FastDP) deactivateLocked(p *peer) {
	p.active = false
	f.deactivations.Add(1)
	f.kerr(f.k.SetFloodRemote(p.Addr, false))
	f.moveMACsLocked(p, p.Addr, netip.Addr{})
	f.kerr(f.k.FlushLearned())
}

// moveMACsLocked repoints the FDB entries of p's MACs from one destination to another (the
// invalid Addr: a drop entry).
func (f *FastDP) moveMACsLocked(p *peer, from, to netip.Addr) {
	for m, n := range f.macs {
		if n == p.Name {
			f.kerr(f.k.DelMAC(m, from))
			f.kerr(f.k.SetMAC(m, to))
		}
	}
}

// loop owns the heartbeat rounds and every state transition, so OnChange calls are
// ordered.
func (f *FastDP) loop() {
	defer f.wg.Done()
	tick := time.NewTicker(f.t.Interval)
	defer tick.Stop()
	for {
		f.round()
		select {
		case <-f.stop:
			return
		case <-tick.C:
		}
	}
}

// round sends one round of heartbeats and steps every peer's state machine.
func (f *FastDP) round() {
	f.sendBeats()
	now := f.now()
	var notify []PeerStatus
	var leaving []*peer
	f.mu.Lock()
	up := false
	for _, p := range f.peers {
		if p.h != nil {
			p.h.step(now)
			if p.h.state == StateHealthy && !p.active {
				f.activateLocked(p)
				up = true
			}
			if p.h.state != StateHealthy && p.active && !p.leaving {
				p.leaving = true
				leaving = append(leaving, p)
			}
		}
		s := f.statusLocked(p)
		if p.leaving {
			s.Active = false // the switch hears about it before the kernel entries go
		}
		if !p.seen || s.State != p.reported.State || s.Reason != p.reported.Reason || s.Active != p.reported.Active {
			p.seen, p.reported = true, s
			notify = append(notify, s)
			reason, overlay := string(s.Reason), "sleeve"
			if s.Detail != "" {
				reason += ": " + s.Detail
			}
			if s.Active {
				overlay = "fastdp"
			}
			f.log.Info("peer data path", logx.KeyPeer, s.Peer, logx.KeyState, s.State, logx.KeyOverlay, overlay, logx.KeyReason, reason)
		}
	}
	if up {
		f.kerr(f.k.FlushLearned())
	}
	f.mu.Unlock()
	if f.cfg.OnChange != nil {
		for _, s := range notify {
			f.cfg.OnChange(s)
		}
	}
	if len(leaving) == 0 {
		return
	}
	f.mu.Lock()
	for _, p := range leaving {
		p.leaving = false
		if f.peers[p.Name] == p && p.active {
			f.deactivateLocked(p)
		}
	}
	f.mu.Unlock()
}

func (f *FastDP) sendBeats() {
	f.mu.Lock()
	any := false
	for _, p := range f.peers {
		if p.h != nil {
			any = true
			break
		}
	}
	f.seq++
	seq := f.seq
	f.mu.Unlock()
	if !any {
		return
	}
	src := f.k.HardwareAddr()
	b := beat{sender: f.cfg.Name, seq: seq, addr: f.cfg.LocalAddr}
	buf := appendBeat(nil, src, b, MinBeatFrame)
	if err := f.k.WriteFrame(buf); err != nil {
		f.log.Debug("cannot send heartbeat", logx.KeyErr, err)
	} else {
		f.beatsSent.Add(1)
	}
	b.full = true
	buf = appendBeat(buf, src, b, f.k.MTU()+ethHeaderLen)
	if err := f.k.WriteFrame(buf); err != nil {
		// EMSGSIZE and the like: the full-size beat is what proves the MTU, so its failure
		// simply shows up as missing acks.
		f.log.Debug("cannot send full-size heartbeat", logx.KeyErr, err)
	} else {
		f.beatsSent.Add(1)
	}
}

// reader receives heartbeats that came through the kernel path and acknowledges them over
// the mesh.
func (f *FastDP) reader() {
	defer f.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, err := f.k.ReadFrame(buf)
		if err != nil {
			select {
			case <-f.stop:
				return
			default:
			}
			f.log.Warn("cannot read heartbeat", logx.KeyErr, err)
			select {
			case <-f.stop:
				return
			case <-time.After(100 * time.Millisecond): // do not spin on a broken socket
			}
			continue
		}
		f.handleBeat(buf[:n])
	}
}

func (f *FastDP) handleBeat(frame []byte) {
	b, err := parseBeat(frame)
	if err != nil {
		f.badFrames.Add(1)
		f.log.Debug("bad heartbeat", logx.KeyErr, err)
		return
	}
	now := f.now()
	f.mu.Lock()
	p := f.peers[b.sender]
	if p == nil || p.h == nil {
		f.mu.Unlock()
		f.unknown.Add(1)
		return
	}
	// The sender says which address it sends from (when it was configured with one): a
	// mismatch with where we reach it means a NAT sits between us.
	nat := b.addr.IsValid() && !b.addr.IsUnspecified() && b.addr != p.Addr
	if b.full {
		p.h.observe(evRecvFull, now)
	} else {
		p.h.observe(evRecvSmall, now)
	}
	if nat {
		p.h.observe(evNAT, now)
	}
	connID, ctl, addr := p.ConnID, f.ctl, p.Addr
	f.mu.Unlock()
	f.beatsRecv.Add(1)
	if ctl == nil {
		return
	}
	if err := ctl.SendOverlayControl(b.sender, connID, appendAck(nil, ack{seq: b.seq, full: b.full, nat: nat, seen: addr})); err != nil {
		f.log.Debug("cannot send heartbeat ack", logx.KeyPeer, b.sender, logx.KeyErr, err)
	}
}

// OverlayControl handles a fastdp control message from peer (mesh.OverlayHook); the bytes
// come from the peer and are checked.
func (f *FastDP) OverlayControl(name mesh.PeerName, connID uint64, msg []byte) {
	a, err := parseAck(msg)
	if err != nil {
		f.badControl.Add(1)
		f.log.Debug("bad control message", logx.KeyPeer, name, logx.KeyErr, err)
		return
	}
	now := f.now()
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.peers[name]
	if p == nil || p.h == nil || p.ConnID != connID || a.seq > f.seq || f.seq-a.seq >= recentSeqs {
		f.unknown.Add(1)
		return
	}
	f.acksRecv.Add(1)
	if a.full {
		p.h.observe(evAckFull, now)
	} else {
		p.h.observe(evAckSmall, now)
	}
	if a.nat || (a.seen.IsValid() && p.LocalAddr.IsValid() && !p.LocalAddr.IsUnspecified() && a.seen != p.LocalAddr.Unmap()) {
		p.h.observe(evNAT, now)
	}
}
