package sleeve

// The receiving pipeline: routineReceive, one per socket, reads batches of datagrams
// (recvmmsg, UDP GRO), finds each sender's connection, checks the replay window, opens the
// datagram in place (AES-GCM) or into a scratch buffer of the same index (secretbox) and
// handles control records itself. The data records of a big batch then go to
// routineDeliver, which hands every run of them from one neighbour to the router in one call
// (the router injects them into the bridge, relays them, or passes them on along a spanning
// tree) while routineReceive already reads and opens the next batch into the other of two
// buffer sets: the TAP write, which carries the containers' own network stack, overlaps
// with the socket read and the decryption. A small batch (an idle path: a ping) is delivered
// by routineReceive itself when routineDeliver has nothing pending, to spare a goroutine
// wake-up of latency. Buffers are reused only once the router returned.

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"time"

	"github.com/weavemesh/weave/internal/logx"
	"github.com/weavemesh/weave/mesh"
	"github.com/weavemesh/weave/overlay"
)

// reader is the scratch state of one socket reader.
type reader struct {
	s       *Sleeve
	bufs    [][]byte
	sizes   []int
	eps     []netip.AddrPort
	scratch [][]byte // secretbox plaintexts
	frames  []overlay.Frame
	runs    []run // frames[runs[k-1].end:runs[k].end] came from runs[k].from
	now     int64
	done    []overlay.Frame // super-frames completed by the datagram being opened
	held    [][]byte        // their reassembly buffers, released after delivery
}

type run struct {
	from mesh.PeerName
	end  int
}

const readBatch = 64

func newReader(s *Sleeve, bufSize int) *reader {
	r := &reader{
		s: s, bufs: make([][]byte, readBatch), sizes: make([]int, readBatch),
		eps: make([]netip.AddrPort, readBatch), scratch: make([][]byte, readBatch),
		frames: make([]overlay.Frame, 0, 4*readBatch),
	}
	for i := range r.bufs {
		r.bufs[i] = make([]byte, bufSize)
	}
	return r
}

// inlineBatch: batches of at most this many datagrams are delivered by the reader itself
// when nothing is pending.
const inlineBatch = 4

func (s *Sleeve) routineReceive() {
	defer s.wg.Done()
	free := make(chan *reader, 2) // never blocks: there are two readers
	work := make(chan *reader, 1)
	free <- newReader(s, maxDatagram)
	free <- newReader(s, maxDatagram)
	s.wg.Add(1)
	go s.routineDeliver(work, free)
	defer close(work)
	for {
		r := <-free
		n, err := s.bind.ReadBatch(r.bufs, r.sizes, r.eps)
		if err != nil {
			free <- r
			if overlay.ReadFailed(err, s.done, s.log, "sleeve socket read failed") {
				return
			}
			continue
		}
		r.handle(n)
		if n <= inlineBatch && len(free) == 1 { // the other buffer set is idle: nothing pending
			r.deliverAll()
			free <- r
			continue
		}
		work <- r
	}
}

// routineDeliver hands what routineReceive opened to the router, in order.
func (s *Sleeve) routineDeliver(work <-chan *reader, free chan<- *reader) {
	defer s.wg.Done()
	for r := range work {
		r.deliverAll()
		free <- r
	}
}

// handle processes the n datagrams just read.
func (r *reader) handle(n int) {
	s := r.s
	r.now = time.Now().UnixNano()
	peers := *s.peers.Load()
	r.frames = r.frames[:0]
	r.runs = r.runs[:0]
	var from mesh.PeerName
	var frames, bytes uint64
	for i := range n {
		d := r.bufs[i][:r.sizes[i]]
		if len(d) < nameLen {
			s.stats.malformed.Add(1)
			continue
		}
		sender := getName(d[:nameLen])
		nb := peers[sender]
		if nb == nil {
			s.stats.unknown.Add(1)
			continue
		}
		if sender != from && len(r.frames) > 0 {
			r.runs = append(r.runs, run{from, len(r.frames)})
		}
		from = sender
		before := len(r.frames)
		r.datagram(nb, d, i, r.eps[i])
		for _, f := range r.frames[before:] {
			bytes += uint64(len(f.Data))
		}
		frames += uint64(len(r.frames) - before)
	}
	if len(r.frames) > 0 && (len(r.runs) == 0 || r.runs[len(r.runs)-1].end < len(r.frames)) {
		r.runs = append(r.runs, run{from, len(r.frames)})
	}
	s.stats.datagrams.Add(uint64(n))
	s.stats.AddIn(frames, bytes, 0)
}

// deliverAll hands the frames of the last handled batch to the router, one call per run of
// frames from one neighbour.
func (r *reader) deliverAll() {
	box := r.s.recv.Load()
	start := 0
	for _, ru := range r.runs {
		if box != nil && box.r != nil && ru.end > start {
			box.r.Receive(ru.from, r.frames[start:ru.end])
		}
		start = ru.end
	}
	clear(r.frames) // drop references into the buffers
	r.frames = r.frames[:0]
	r.runs = r.runs[:0]
	for i, b := range r.held {
		r.s.putAsm(b)
		r.held[i] = nil
	}
	r.held = r.held[:0]
}

// datagram opens one datagram from nb and appends its data records to r.frames.
func (r *reader) datagram(nb *neighbour, d []byte, i int, ep netip.AddrPort) {
	s := r.s
	var body, buf []byte // buf: what body lies in, at pos, for the last record's Frame.Buf
	var pos int
	if nb.sealed() {
		if cap(r.scratch[i]) < len(d) {
			// Full size: the router coalesces frames into the room behind the last one.
			r.scratch[i] = make([]byte, max(len(d), maxDatagram))
		}
		var err error
		body, err = nb.crypto.open.open(r.scratch[i], d)
		buf = r.scratch[i] // secretbox opens into scratch[0:]
		if nb.crypto.open.aead != nil {
			buf, pos = r.bufs[i], sealedHeaderLen // AES-GCM opens in place
		}
		switch {
		case errors.Is(err, errReplay):
			s.stats.replayed.Add(1)
			return
		case errors.Is(err, errAuth):
			s.stats.authFailed.Add(1)
			return
		case err != nil:
			s.stats.malformed.Add(1)
			return
		}
	} else {
		body = d[plainHeaderLen:]
		buf, pos = r.bufs[i], plainHeaderLen
	}
	start := len(r.frames)
	for len(body) > 0 {
		src, dst, payload, rest, err := nextRecord(body)
		if err != nil {
			s.stats.malformed.Add(1)
			return
		}
		body = rest
		payloadAt := pos + recordHeaderLen
		pos = payloadAt + len(payload)
		if src == mesh.UnknownPeerName && dst == mesh.UnknownPeerName {
			if len(payload) > 0 && payload[0] == ctlPiece {
				r.piece(nb, payload)
			} else {
				r.control(nb, payload, ep)
			}
			continue
		}
		delivered := false
		if dst == mesh.UnknownPeerName && src == nb.name {
			// The neighbour's kernel path delivered this frame to us already: pass it on only.
			dst, delivered = s.cfg.Name, true
		}
		if src == mesh.UnknownPeerName || dst == mesh.UnknownPeerName {
			s.stats.malformed.Add(1)
			continue
		}
		r.frames = append(r.frames, overlay.Frame{Src: src, Dst: dst, Data: payload, Off: payloadAt, Delivered: delivered})
	}
	// Nothing follows the last frame in its buffer: the router may write it to the TAP in
	// place and coalesce into the rest of the buffer.
	if last := len(r.frames) - 1; last >= start && len(body) == 0 {
		r.frames[last].Buf = buf[:cap(buf)]
	}
	for k := start; k < len(r.frames)-1; k++ {
		r.frames[k].Off = 0
	}
	// Super-frames lie in buffers of their own (the last piece completed them).
	r.frames = append(r.frames, r.done...)
	clear(r.done)
	r.done = r.done[:0]
}

// control handles a control record from neighbour nb that arrived from ep.
func (r *reader) control(nb *neighbour, p []byte, ep netip.AddrPort) {
	s := r.s
	if len(p) < 9 || binary.BigEndian.Uint64(p[1:9]) != nb.connID {
		s.stats.malformed.Add(1) // or a stale connection's: either way not ours
		return
	}
	switch p[0] {
	case ctlHeartbeat:
		if len(p) < ctlHeartbeatLen {
			s.stats.malformed.Add(1)
			return
		}
		nb.path.lastHeard.Store(r.now)
		if len(p) >= ctlHeartbeatGSOLen {
			r.gsoReport(nb, binary.BigEndian.Uint32(p[10:14]), binary.BigEndian.Uint32(p[14:18]))
		}
		// Follow the peer's address (NAT): a heartbeat is authentic when the connection is
		// sealed, and an unsealed connection trusts its network anyway.
		if cur := nb.path.ep.Load(); cur == nil || *cur != ep {
			e := ep
			nb.path.ep.Store(&e)
			s.log.Info("sleeve peer address", logx.KeyPeer, nb.name.String(), logx.KeyAddr, ep.String())
		}
		kick := !nb.path.heardFrom.Swap(true)
		if p[9]&hbHeardYou != 0 && !nb.path.theyHeardUs.Swap(true) {
			kick = true
		}
		if kick {
			select {
			case nb.events.kick <- struct{}{}:
			default:
			}
		}
	case ctlProbe, ctlProbeAck:
		if len(p) < ctlProbeMinLen {
			s.stats.malformed.Add(1)
			return
		}
		size := binary.BigEndian.Uint16(p[9:11])
		ch := nb.events.acks
		if p[0] == ctlProbeAck {
			ch = nb.events.probeAcked
		}
		select {
		case ch <- size:
		default:
		}
	default:
		s.stats.malformed.Add(1)
	}
}
