package sleeve

// The sending pipeline, fixed for the life of a connection:
//
//	router goroutine (TAP reader, or a socket reader relaying)
//	    Forward(hop, frames): packs the frames as records into datagram bodies of a pooled
//	    batch (copying them, so the caller's buffers are free on return), up to the verified
//	    path MTU; then either
//	      - sends it itself, if the neighbour's send lock is free: drains what is queued
//	        first (order), seals each datagram (the sequence counter and cipher state are
//	        guarded by the send lock) and sends the batch with one WriteBatch (sendmmsg,
//	        UDP GSO). No goroutine hand-off on the common path: that costs latency and, on
//	        two cores, throughput;
//	      - or queues it on neighbour.queue (ordered; blocks while full, back-pressure
//	        instead of loss) and signals routineSend.
//	        |
//	        v
//	routineSend, one per neighbour: takes the send lock when signalled and drains the
//	    queue in order (batches are only ever taken from the queue under the lock, so a
//	    caller's batches never overtake each other); it also sends the heartbeats, MTU
//	    probes and probe acks of that neighbour, under the same lock.
//
// A separate pool of crypto workers would only move the same work to other goroutines on a
// two-core machine; the goroutine that holds the send lock is the crypto stage.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/weavemesh/weave/mesh"
	"github.com/weavemesh/weave/overlay"
	"github.com/weavemesh/weave/udp"
)

const (
	// batchDatagrams is how many datagrams one queued batch holds (one GSO send at most).
	batchDatagrams = udp.MaxSegments
	// queueLen is how many batches may wait for a neighbour's sender.
	queueLen = 16
	// minMTU is the IP MTU every IPv4 path carries (RFC 791 576; we never probe below).
	minMTU = 576
	// probeAttempts is how often one probe size is tried before it is taken as too big: a
	// probe lost to congestion must not shrink a busy path's MTU.
	probeAttempts = 3
	// probeSlack ends the MTU search once the window is this small: 0 finds the exact MTU
	// in about ten probes (log2 of 1500-576).
	probeSlack = 0
)

type batch struct {
	bufs [][]byte // datagram buffers; a body starts at sealedHeaderLen
	lens []int    // body lengths
	// A lent datagram's body (one record) is lentBuf[i][lentOff[i]:][:lens[i]], in the
	// caller's buffer, with room in front for the plain header; only while the caller waits.
	lentBuf [][]byte
	lentOff []int
	pieces  []pieceHdr // datagram i carries a piece of a super-frame (gso.go)
	n       int        // datagrams in use
	frames  uint64
	bytes   uint64
}

type neighbour struct {
	s      *Sleeve
	name   mesh.PeerName
	connID uint64
	info   mesh.ConnInfo

	gso bool     // the peer takes super-frames in pieces, and we send them so
	asm assembly // the super-frame being received; the socket reader's
	// Super-frames from the peer put together and lost (the reader counts, heartbeats
	// report them), and until when we send none because the peer reported losses.
	asmDone, asmLost atomic.Uint32
	gsoOffUntil      atomic.Int64
	gsoID            atomic.Uint32 // numbers our super-frames to the peer
	gsoLoss          gsoLossState  // the socket reader's

	// Set under s.mu before ready; immutable afterwards.
	helloSent, helloRecv, theyTrust, ready bool
	cipher                                 string // "" when unsealed
	seal                                   sealer // routineSend only
	open                                   opener // the socket reader only

	ep          atomic.Pointer[netip.AddrPort]
	maxPayload  atomic.Int32 // verified UDP payload limit; 0 until verified
	established atomic.Bool
	problem     atomic.Value // string: why the data path cannot start (no common cipher)
	heardFrom   atomic.Bool
	theyHeardUs atomic.Bool
	lastHeard   atomic.Int64

	sendMu     sync.Mutex // guards seal, the buffers below, probe and lastMTU
	queue      chan *batch
	signal     chan struct{} // something was queued
	free       chan *batch
	acks       chan uint16 // peer's probes to acknowledge
	probeAcked chan uint16 // acks of our probes
	kick       chan struct{}
	reprobe    chan struct{} // verify the path MTU now (the peer reported heavy losses)
	done       chan struct{}
	stopOnce   sync.Once

	// Guarded by sendMu.
	out     [][]byte // datagrams of the batch being sent
	sbOut   [][]byte // secretbox output buffers
	ctl     []byte   // control datagram scratch
	ctlOut  [][]byte
	probe   probeState
	lastMTU time.Time
}

type probeState struct {
	active   bool
	lo, hi   int // lo is known good, hi is the largest candidate left
	cand     int
	attempts int
	verified bool
	timer    *time.Timer
}

func newNeighbour(s *Sleeve, ci mesh.ConnInfo) *neighbour {
	probeTimer := time.NewTimer(time.Hour)
	probeTimer.Stop()
	return &neighbour{
		probe: probeState{timer: probeTimer},
		s:     s, name: ci.Peer, connID: ci.ConnID, info: ci,
		gso:        !s.cfg.DisableGSO && ci.Features[FeatureGSO] == "1",
		queue:      make(chan *batch, queueLen),
		signal:     make(chan struct{}, 1),
		out:        make([][]byte, batchDatagrams),
		ctlOut:     make([][]byte, 1),
		free:       make(chan *batch, queueLen+2),
		acks:       make(chan uint16, 8),
		probeAcked: make(chan uint16, 8),
		kick:       make(chan struct{}, 1),
		reprobe:    make(chan struct{}, 1),
		done:       make(chan struct{}),
	}
}

func (n *neighbour) stop() { n.stopOnce.Do(func() { close(n.done) }) }

// waiting says why n is not established, for status.
func (n *neighbour) waiting() string {
	if p, _ := n.problem.Load().(string); p != "" {
		return p
	}
	port := "the sleeve's UDP port"
	if ep := n.ep.Load(); ep != nil {
		port = fmt.Sprintf("UDP %d", ep.Port())
	}
	switch {
	case !n.heardFrom.Load():
		return "no heartbeats from the peer over " + port + " (blocked?)"
	case !n.theyHeardUs.Load():
		return "the peer does not hear our heartbeats over " + port + " (blocked one way?)"
	default:
		return "verifying the path MTU"
	}
}

// setupCrypto picks how datagrams with this neighbour are protected: no keys (no password)
// or both ends in a trusted subnet: unsealed; otherwise the first of our ciphers the peer
// offers. No common cipher means no data path, never plaintext.
func (n *neighbour) setupCrypto(ours []string) error {
	if !n.info.HasKeys || (n.info.Trusted && n.theyTrust) {
		return nil
	}
	theirs := strings.Fields(n.info.Features[FeatureCiphers])
	for _, c := range ours {
		for _, t := range theirs {
			if c != t {
				continue
			}
			aeadOut, err := newAEAD(c, &n.info.SendKey)
			if err != nil {
				return err
			}
			aeadIn, err := newAEAD(c, &n.info.RecvKey)
			if err != nil {
				return err
			}
			n.cipher = c
			n.seal = sealer{name: n.s.cfg.Name, aead: aeadOut, key: n.info.SendKey}
			n.open = opener{aead: aeadIn, key: n.info.RecvKey}
			return nil
		}
	}
	return errors.New("no common cipher: we offer " + strings.Join(ours, ",") + ", peer offers " +
		strings.Join(theirs, ","))
}

func (n *neighbour) sealed() bool { return n.cipher != "" }

func (n *neighbour) headerLen() int {
	if n.sealed() {
		return sealedHeaderLen + tagLen
	}
	return plainHeaderLen
}

func (n *neighbour) ipOverhead() int {
	if ep := n.ep.Load(); ep != nil && !ep.Addr().Is4() {
		return udpIPv6Overhead
	}
	return udpIPv4Overhead
}

// bodyLimit is the largest datagram body (records) that fits the verified path.
func (n *neighbour) bodyLimit() int {
	mp := int(n.maxPayload.Load())
	if mp == 0 {
		return 0
	}
	return mp - n.headerLen()
}

// maxFrame is the largest Ethernet frame one record can carry.
func (n *neighbour) maxFrame() int {
	if l := n.bodyLimit(); l > recordHeaderLen {
		return l - recordHeaderLen
	}
	return 0
}

func (n *neighbour) getBatch(limit int) *batch {
	size := sealedHeaderLen + limit + tagLen
	var b *batch
	select {
	case b = <-n.free:
	default:
		b = &batch{bufs: make([][]byte, batchDatagrams), lens: make([]int, batchDatagrams),
			lentBuf: make([][]byte, batchDatagrams), lentOff: make([]int, batchDatagrams),
			pieces: make([]pieceHdr, batchDatagrams)}
	}
	if len(b.bufs[0]) < size {
		for i := range b.bufs {
			b.bufs[i] = make([]byte, size)
		}
	}
	b.n, b.frames, b.bytes = 0, 0, 0
	return b
}

func (n *neighbour) putBatch(b *batch) {
	clear(b.lentBuf[:b.n]) // the caller's buffers are theirs again
	clear(b.pieces[:b.n])
	select {
	case n.free <- b:
	default:
	}
}

// forward sends frames to n: at once if nobody else is sending to n (then a big frame whose
// buffer the caller lent, see overlay.Frame.Buf, is sealed or sent straight from it), else
// packed into a batch of our own for routineSend.
func (n *neighbour) forward(frames []overlay.Frame) {
	if n.sendMu.TryLock() {
		n.drainLocked()
		n.pack(frames, true)
		n.sendMu.Unlock()
		return
	}
	n.pack(frames, false)
}

// lendMin is the smallest frame sent from the caller's buffer rather than packed with others.
const lendMin = 256

// pack packs frames as records into datagrams. locked: the caller holds n.sendMu, so full
// batches are sent at once (in order) and lent buffers are used before pack returns.
func (n *neighbour) pack(frames []overlay.Frame, locked bool) {
	limit := n.bodyLimit()
	if limit <= recordHeaderLen {
		n.s.stats.AddOut(0, 0, uint64(len(frames)))
		return
	}
	room := recordHeaderLen // what a lent frame needs in front of it
	if !n.sealed() {
		room += plainHeaderLen
	}
	var drops uint64
	b := n.getBatch(limit)
	for _, fr := range frames {
		need := recordHeaderLen + len(fr.Data)
		dst := fr.Dst
		if fr.Delivered {
			dst = mesh.UnknownPeerName // see wire.go: delivered already, pass on only
		}
		if fr.GSO.IsGSO() {
			lend := locked && n.sealed() && fr.Buf != nil && fr.Off >= recordHeaderLen+pieceHeaderLen &&
				fr.Off+len(fr.Data) <= len(fr.Buf)
			var ok bool
			if b, ok = n.packSuper(b, &fr, limit, locked, lend); !ok {
				drops++ // the router sizes super-frames with MaxGSO; the path may just have shrunk
				continue
			}
			b.frames++
			b.bytes += uint64(len(fr.Data))
			continue
		}
		if need > limit || len(fr.Data) > 0xffff {
			drops++ // the router sizes frames with MaxFrame; the path may just have shrunk
			continue
		}
		lend := locked && fr.Buf != nil && len(fr.Data) >= lendMin && fr.Off >= room &&
			fr.Off+len(fr.Data) <= len(fr.Buf)
		if lend || b.n == 0 || b.lentBuf[b.n-1] != nil || b.pieces[b.n-1].on || b.lens[b.n-1]+need > limit {
			if b.n == len(b.bufs) {
				n.sendOrSubmit(b, locked)
				b = n.getBatch(limit)
			}
			b.lens[b.n] = 0
			b.n++
		}
		i := b.n - 1
		if lend {
			start := fr.Off - recordHeaderLen
			putRecord(fr.Buf[start:], fr.Src, dst, len(fr.Data)) // the frame is already there
			b.lentBuf[i], b.lentOff[i], b.lens[i] = fr.Buf, start, need
		} else {
			off := sealedHeaderLen + b.lens[i]
			copy(putRecord(b.bufs[i][off:], fr.Src, dst, len(fr.Data)), fr.Data)
			b.lens[i] += need
		}
		b.frames++
		b.bytes += uint64(len(fr.Data))
	}
	if drops > 0 {
		n.s.stats.AddOut(0, 0, drops)
	}
	if b.n == 0 {
		n.putBatch(b)
		return
	}
	n.sendOrSubmit(b, locked)
}

func (n *neighbour) sendOrSubmit(b *batch, locked bool) {
	if locked {
		n.sendBatchLocked(b)
		return
	}
	n.submit(b)
}

// submit sends b at once if nobody else is sending to n, else queues it for routineSend.
func (n *neighbour) submit(b *batch) {
	if n.sendMu.TryLock() {
		n.drainLocked()
		n.sendBatchLocked(b)
		n.sendMu.Unlock()
		return
	}
	select {
	case n.queue <- b:
	default:
		n.wake() // full: make sure someone drains before we wait
		select {
		case n.queue <- b:
		case <-n.done:
			n.s.stats.AddOut(0, 0, b.frames)
			n.putBatch(b)
			return
		}
	}
	n.wake()
}

func (n *neighbour) wake() {
	select {
	case n.signal <- struct{}{}:
	default:
	}
}

// drainLocked sends everything queued, in order. Must hold n.sendMu.
func (n *neighbour) drainLocked() {
	for {
		select {
		case b := <-n.queue:
			n.sendBatchLocked(b)
		default:
			return
		}
	}
}

// routineSend is the neighbour's ordered sender; see the pipeline at the top of this file.
func (n *neighbour) routineSend() {
	defer n.s.wg.Done()
	cfg := &n.s.cfg
	hb := time.NewTimer(0)
	defer hb.Stop()
	defer n.probe.timer.Stop()
	n.sendMu.Lock()
	if n.sealed() && n.seal.aead == nil {
		n.sbOut = make([][]byte, batchDatagrams)
	}
	n.ctl = make([]byte, maxDatagram+sealedHeaderLen+tagLen)
	n.sendMu.Unlock()
	defer func() {
		if n.established.Load() {
			n.s.mesh.SetEstablished(n.name, n.connID, false) // connection gone or closing: best effort
		}
	}()
	for {
		select {
		case <-n.done:
			return
		case <-n.signal:
			n.sendMu.Lock()
			n.drainLocked()
			n.sendMu.Unlock()
		case size := <-n.acks:
			n.sendMu.Lock()
			n.sendControl(ctlProbeAck, size, 0)
			n.sendMu.Unlock()
		case size := <-n.probeAcked:
			n.sendMu.Lock()
			n.onProbeAck(int(size))
			n.sendMu.Unlock()
		case <-n.probe.timer.C:
			n.sendMu.Lock()
			n.onProbeTimeout()
			n.sendMu.Unlock()
		case <-n.kick:
			n.sendMu.Lock()
			n.tick()
			n.sendMu.Unlock()
		case <-n.reprobe:
			n.sendMu.Lock()
			n.startProbe()
			n.sendMu.Unlock()
		case <-hb.C:
			n.sendMu.Lock()
			n.heartbeat()
			n.tick()
			n.sendMu.Unlock()
			if n.established.Load() {
				hb.Reset(cfg.SlowHeartbeat)
			} else {
				hb.Reset(cfg.FastHeartbeat)
			}
		}
	}
}

// sendBatchLocked seals and sends b. Must hold n.sendMu.
func (n *neighbour) sendBatchLocked(b *batch) {
	defer n.putBatch(b)
	ep := n.ep.Load()
	if ep == nil {
		n.s.stats.AddOut(0, 0, b.frames)
		return
	}
	out := n.out[:b.n]
	for i := range b.n {
		if lb := b.lentBuf[i]; lb != nil {
			if p := &b.pieces[i]; p.lent {
				// Over the end of the previous piece, sealed by now (in order).
				off := b.lentOff[i]
				p.put(putRecord(lb[off:], 0, 0, b.lens[i]-recordHeaderLen))
			}
			out[i] = n.lentDatagram(lb, b.lentOff[i], b.lens[i], b.bufs[i], i)
		} else {
			out[i] = n.datagram(b.bufs[i], b.lens[i], i)
		}
	}
	if err := n.s.bind.WriteBatch(out, *ep); err != nil {
		n.s.stats.AddOut(0, 0, b.frames)
		n.sendFailed(err)
		return
	}
	n.s.stats.AddOut(b.frames, b.bytes, 0)
}

// datagram finishes the datagram whose body is buf[sealedHeaderLen:][:length]: header in
// front, and sealed if the connection is.
func (n *neighbour) datagram(buf []byte, length, i int) []byte {
	body := buf[sealedHeaderLen : sealedHeaderLen+length]
	switch {
	case !n.sealed():
		putName(buf[sealedHeaderLen-plainHeaderLen:sealedHeaderLen], n.s.cfg.Name)
		return buf[sealedHeaderLen-plainHeaderLen : sealedHeaderLen+length]
	case n.seal.aead != nil:
		return n.seal.seal(buf[:cap(buf)], body)
	default:
		need := sealedHeaderLen + length + tagLen
		if cap(n.sbOut[i]) < need {
			n.sbOut[i] = make([]byte, need)
		}
		return n.seal.seal(n.sbOut[i][:need], body)
	}
}

// lentDatagram finishes the datagram whose body is buf[off:off+length] in a lent buffer:
// unsealed, the header goes in front of it there; sealed, the body is sealed into own (or
// the secretbox buffer), so the plaintext is read once and never copied.
func (n *neighbour) lentDatagram(buf []byte, off, length int, own []byte, i int) []byte {
	body := buf[off : off+length]
	switch {
	case !n.sealed():
		putName(buf[off-plainHeaderLen:off], n.s.cfg.Name)
		return buf[off-plainHeaderLen : off+length]
	case n.seal.aead != nil:
		return n.seal.seal(own[:cap(own)], body)
	default:
		need := sealedHeaderLen + length + tagLen
		if cap(n.sbOut[i]) < need {
			n.sbOut[i] = make([]byte, need)
		}
		return n.seal.seal(n.sbOut[i][:need], body)
	}
}

// sendControl sends one control record: a heartbeat (arg = flags), a probe (arg = the IP
// size of the whole datagram) or a probe ack (arg = the size acknowledged).
func (n *neighbour) sendControl(kind byte, arg uint16, flags byte) error {
	ep := n.ep.Load()
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
	buf := n.ctl
	p := putRecord(buf[sealedHeaderLen:], 0, 0, plen)
	clear(p)
	p[0] = kind
	binary.BigEndian.PutUint64(p[1:9], n.connID)
	if kind == ctlHeartbeat {
		p[9] = flags
		binary.BigEndian.PutUint32(p[10:14], n.asmDone.Load())
		binary.BigEndian.PutUint32(p[14:18], n.asmLost.Load())
	} else {
		binary.BigEndian.PutUint16(p[9:11], arg)
	}
	n.ctlOut[0] = n.datagram(buf, recordHeaderLen+plen, 0)
	err := n.s.bind.WriteBatch(n.ctlOut, *ep)
	if err != nil && kind != ctlProbe {
		n.sendFailed(err)
	}
	return err
}

func (n *neighbour) heartbeat() {
	var flags byte
	if n.heardFrom.Load() {
		flags |= hbHeardYou
	}
	n.sendControl(ctlHeartbeat, 0, flags)
}

func (n *neighbour) sendFailed(err error) {
	if errors.Is(err, syscall.EMSGSIZE) {
		// The kernel learned a smaller path MTU (ICMP): take it at once, then verify.
		if k := n.kernelPMTU(); k > 0 && k-n.ipOverhead() < int(n.maxPayload.Load()) {
			n.maxPayload.Store(int32(k - n.ipOverhead()))
			n.s.log.Info("path MTU shrank", "remote", n.name.String(), "pmtu", k)
		}
		n.startProbe()
		return
	}
	if !isClosed(err) {
		n.s.log.Debug("sleeve send failed", "remote", n.name.String(), "err", err)
	}
}

// kernelPMTU is the kernel's idea of the path MTU (interface MTU or what ICMP taught it).
func (n *neighbour) kernelPMTU() int {
	ep := n.ep.Load()
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

// tick moves the connection's state: established once heartbeats pass both ways and the
// path MTU is verified; not established when heartbeats stop.
func (n *neighbour) tick() {
	now := time.Now()
	cfg := &n.s.cfg
	if n.heardFrom.Load() && now.Sub(time.Unix(0, n.lastHeard.Load())) > cfg.Timeout {
		n.heardFrom.Store(false)
		n.theyHeardUs.Store(false)
		if n.established.Swap(false) {
			n.s.log.Warn("sleeve heartbeats stopped", "remote", n.name.String(), "timeout", cfg.Timeout)
			n.s.mesh.SetEstablished(n.name, n.connID, false)
		}
	}
	both := n.heardFrom.Load() && n.theyHeardUs.Load()
	if !both {
		return
	}
	if !n.probe.verified || now.Sub(n.lastMTU) > cfg.ReprobeEvery {
		n.startProbe()
	}
	if n.probe.verified && !n.established.Load() {
		n.established.Store(true)
		n.s.log.Info("sleeve connection established", "remote", n.name.String(), "cipher", n.cipherName(),
			"mtu", n.maxFrame()-14, "endpoint", n.ep.Load().String())
		if err := n.s.mesh.SetEstablished(n.name, n.connID, true); err != nil {
			n.s.log.Debug("set established", "remote", n.name.String(), "err", err)
		}
	}
}

func (n *neighbour) cipherName() string {
	if n.cipher == "" {
		return cipherNone
	}
	return n.cipher
}

// startProbe begins a search for the path MTU: the kernel's value first (the usual answer),
// then a binary search down to minMTU, as Weave did.
func (n *neighbour) startProbe() {
	if n.probe.active {
		return
	}
	hi := n.kernelPMTU()
	n.probe = probeState{active: true, lo: minMTU, hi: hi, cand: hi, verified: n.probe.verified, timer: n.probe.timer}
	n.sendProbe()
}

func (n *neighbour) sendProbe() {
	n.probe.attempts++
	if err := n.sendControl(ctlProbe, uint16(min(n.probe.cand, 0xffff)), 0); errors.Is(err, syscall.EMSGSIZE) {
		// Too big for the kernel already: it knows better.
		if k := n.kernelPMTU(); k < n.probe.cand {
			n.probe.hi, n.probe.cand, n.probe.attempts = k, k, 0
			n.sendProbe()
			return
		}
	}
	n.probe.timer.Reset(n.s.cfg.ProbeTimeout)
}

func (n *neighbour) onProbeAck(size int) {
	p := &n.probe
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
	p := &n.probe
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
	n.probe.active = false
	n.probe.verified = true
	n.lastMTU = time.Now()
	old := n.maxPayload.Swap(int32(mtu - n.ipOverhead()))
	if int(old) != mtu-n.ipOverhead() {
		n.s.log.Info("effective MTU verified", "remote", n.name.String(), "pmtu", mtu, "mtu", n.maxFrame()-14)
	}
	n.tick()
}
