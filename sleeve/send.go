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
)

// forward sends frames to n: at once if nobody else is sending to n (then a big frame whose
// buffer the caller lent, see overlay.Frame.Buf, is sealed or sent straight from it), else
// packed into a batch of our own for routineSend.
func (n *neighbour) forward(frames []overlay.Frame) {
	if n.send.TryLock() {
		n.drainLocked()
		n.pack(frames, true)
		n.send.Unlock()
		return
	}
	n.pack(frames, false)
}

// lendMin is the smallest frame sent from the caller's buffer rather than packed with others.
const lendMin = 256

// pack packs frames as records into datagrams. locked: the caller holds n.send, so full
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
	if n.send.TryLock() {
		n.drainLocked()
		n.sendBatchLocked(b)
		n.send.Unlock()
		return
	}
	select {
	case n.queue.batches <- b:
	default:
		n.wake() // full: make sure someone drains before we wait
		select {
		case n.queue.batches <- b:
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
	case n.queue.signal <- struct{}{}:
	default:
	}
}

// drainLocked sends everything queued, in order. Must hold n.send.
func (n *neighbour) drainLocked() {
	for {
		select {
		case b := <-n.queue.batches:
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
	defer n.send.probe.timer.Stop()
	n.send.Lock()
	if n.sealed() && n.crypto.seal.aead == nil {
		n.send.sbOut = make([][]byte, batchDatagrams)
	}
	n.send.ctl = make([]byte, maxDatagram+sealedHeaderLen+tagLen)
	n.send.Unlock()
	defer func() {
		if n.path.established.Load() {
			n.s.mesh.SetEstablished(n.name, n.connID, false) // connection gone or closing: best effort
		}
	}()
	for {
		select {
		case <-n.done:
			return
		case <-n.queue.signal:
			n.send.Lock()
			n.drainLocked()
			n.send.Unlock()
		case size := <-n.events.acks:
			n.send.Lock()
			n.sendControl(ctlProbeAck, size, 0)
			n.send.Unlock()
		case size := <-n.events.probeAcked:
			n.send.Lock()
			n.onProbeAck(int(size))
			n.send.Unlock()
		case <-n.send.probe.timer.C:
			n.send.Lock()
			n.onProbeTimeout()
			n.send.Unlock()
		case <-n.events.kick:
			n.send.Lock()
			n.tick()
			n.send.Unlock()
		case <-n.events.reprobe:
			n.send.Lock()
			n.startProbe()
			n.send.Unlock()
		case <-hb.C:
			n.send.Lock()
			n.heartbeat()
			n.tick()
			n.checkPMTU()
			n.send.Unlock()
			if n.path.established.Load() {
				hb.Reset(cfg.SlowHeartbeat)
			} else {
				hb.Reset(cfg.FastHeartbeat)
			}
		}
	}
}

// sendBatchLocked seals and sends b. Must hold n.send.
func (n *neighbour) sendBatchLocked(b *batch) {
	defer n.putBatch(b)
	ep := n.path.ep.Load()
	if ep == nil {
		n.s.stats.AddOut(0, 0, b.frames)
		return
	}
	out := n.send.out[:b.n]
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
	n.send.sentData = true
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
	case n.crypto.seal.aead != nil:
		return n.crypto.seal.seal(buf[:cap(buf)], body)
	default:
		need := sealedHeaderLen + length + tagLen
		if cap(n.send.sbOut[i]) < need {
			n.send.sbOut[i] = make([]byte, need)
		}
		return n.crypto.seal.seal(n.send.sbOut[i][:need], body)
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
	case n.crypto.seal.aead != nil:
		return n.crypto.seal.seal(own[:cap(own)], body)
	default:
		need := sealedHeaderLen + length + tagLen
		if cap(n.send.sbOut[i]) < need {
			n.send.sbOut[i] = make([]byte, need)
		}
		return n.crypto.seal.seal(n.send.sbOut[i][:need], body)
	}
}
