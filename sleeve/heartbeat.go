package sleeve

import (
	"encoding/binary"
	"time"

	"github.com/weavemesh/weave/internal/logx"
)

// Heartbeats and control records: a connection is established once heartbeats pass both
// ways and the path MTU is verified (pmtu.go), and falls back when they stop.

// sendControl sends one control record: a heartbeat (arg = flags), a probe (arg = the IP
// size of the whole datagram) or a probe ack (arg = the size acknowledged).
func (n *neighbour) sendControl(kind byte, arg uint16, flags byte) error {
	ep := n.path.ep.Load()
	if ep == nil {
		return nil
	}
	var plen int
	switch kind {
	case ctlHeartbeat:
		plen = ctlHeartbeatGSOLen
	case ctlProbeAck:
		plen = ctlProbeMinLen
	case ctlProbe:
		plen = int(arg) - n.ipOverhead() - n.headerLen() - recordHeaderLen
		if plen < ctlProbeMinLen {
			plen = ctlProbeMinLen
		}
	}
	buf := n.send.ctl
	p := putRecord(buf[sealedHeaderLen:], 0, 0, plen)
	clear(p)
	p[0] = kind
	binary.BigEndian.PutUint64(p[1:9], n.connID)
	if kind == ctlHeartbeat {
		p[9] = flags
		binary.BigEndian.PutUint32(p[10:14], n.gso.asmDone.Load())
		binary.BigEndian.PutUint32(p[14:18], n.gso.asmLost.Load())
	} else {
		binary.BigEndian.PutUint16(p[9:11], arg)
	}
	n.send.ctlOut[0] = n.datagram(buf, recordHeaderLen+plen, 0)
	err := n.s.bind.WriteBatch(n.send.ctlOut, *ep)
	if err != nil && kind != ctlProbe {
		n.sendFailed(err)
	}
	return err
}

func (n *neighbour) heartbeat() {
	var flags byte
	if n.path.heardFrom.Load() {
		flags |= hbHeardYou
	}
	n.sendControl(ctlHeartbeat, 0, flags)
}

// tick moves the connection's state: established once heartbeats pass both ways and the
// path MTU is verified; not established when heartbeats stop.
func (n *neighbour) tick() {
	now := time.Now()
	cfg := &n.s.cfg
	if n.path.heardFrom.Load() && now.Sub(time.Unix(0, n.path.lastHeard.Load())) > cfg.Timeout {
		n.path.heardFrom.Store(false)
		n.path.theyHeardUs.Store(false)
		if n.path.established.Swap(false) {
			n.s.log.Warn("sleeve heartbeats stopped", logx.KeyPeer, n.name.String(), logx.KeyDuration, cfg.Timeout)
			n.s.mesh.SetEstablished(n.name, n.connID, false)
		}
	}
	both := n.path.heardFrom.Load() && n.path.theyHeardUs.Load()
	if !both {
		return
	}
	if !n.send.probe.verified || now.Sub(n.send.lastMTU) > cfg.ReprobeEvery {
		n.startProbe()
	}
	if n.send.probe.verified && !n.path.established.Load() {
		n.path.established.Store(true)
		n.s.log.Info("sleeve connection established", logx.KeyPeer, n.name.String(), logx.KeyCipher, n.cipherName(),
			logx.KeyMTU, n.maxFrame()-14, logx.KeyAddr, n.path.ep.Load().String())
		if err := n.s.mesh.SetEstablished(n.name, n.connID, true); err != nil {
			n.s.log.Debug("set established", logx.KeyPeer, n.name.String(), logx.KeyErr, err)
		}
	}
}
