package sleeve

// GSO passthrough: a TCP super-frame (up to 64 KiB, see overlay.Frame.GSO) crosses as one
// unit instead of ~45 frames. The sender cuts its bytes, not its TCP segments, into
// "pieces" that each fill a datagram; the receiver puts them back together in order and
// hands the whole super-frame on, so that neither TAP nor router cuts and re-merges TCP
// segments in userspace, and the kernels at both ends see one packet.
//
// A piece is a control record (src = dst = 0, so it is never relayed as it is: every hop
// reassembles, and a relay sends the super-frame on in pieces of its own):
//
//	[kind 1 = ctlPiece][flags 1][id 2][src peer 6][dst peer 6][total 4][offset 4][virtio-net hdr 10][bytes]
//
// id counts super-frames per connection, so that the receiver also notices super-frames of
// which no piece arrived (a whole batch dropped at a full socket queue), and reports losses.
//
// All pieces of a super-frame go out in one batch (one sendmmsg, in order), but the network
// may reorder them, and a path with jitter mixes the pieces of consecutive super-frames
// (netem with 5 ms of jitter shuffles them all: docs/VMLAB.md). The receiver therefore puts
// together up to asmSlots super-frames at once per neighbour, each with a bitmap of the
// pieces it has, among the last asmWindow ids; a super-frame still incomplete when it leaves
// that window, when its slot is needed for a newer one, or after asmTimeout is dropped and
// counted as lost, and TCP recovers as from any loss.

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"time"

	"github.com/weavemesh/weave/internal/logx"
	"github.com/weavemesh/weave/mesh"
	"github.com/weavemesh/weave/overlay"
	"github.com/weavemesh/weave/tap/frame"
)

const (
	// FeatureGSO is offered in the handshake when the sleeve takes pieces of super-frames.
	FeatureGSO = "gso"

	ctlPiece       = 4
	pieceHeaderLen = 1 + 1 + 2 + 2*nameLen + 4 + 4 + frame.VirtioNetHdrLen

	// maxSuperFrame is the largest super-frame carried: a 64 KiB IP packet in a tagged
	// Ethernet frame (tap.MaxFrameSize).
	maxSuperFrame = 65535 + 18
	// asmHeadroom is kept free in front of a reassembled super-frame: the router writes the
	// TAP's virtio-net header there, and a relay writes its first piece's headers there.
	asmHeadroom = 64
	// asmPoolLen bounds the reassembly buffers kept for reuse.
	asmPoolLen = 16
)

// pieceHdr is a piece's header, kept with a lent datagram until it is sealed: it is written
// into the frame's buffer just in front of the piece's bytes, over the end of the previous
// piece, which has been sealed by then.
type pieceHdr struct {
	on, lent      bool
	id            uint16
	src, dst      mesh.PeerName
	total, offset uint32
	gso           frame.VirtioNetHdr
}

func (p *pieceHdr) put(b []byte) {
	_ = b[pieceHeaderLen-1]
	b[0], b[1] = ctlPiece, 0
	binary.BigEndian.PutUint16(b[2:4], p.id)
	putName(b[4:10], p.src)
	putName(b[10:16], p.dst)
	binary.BigEndian.PutUint32(b[16:20], p.total)
	binary.BigEndian.PutUint32(b[20:24], p.offset)
	p.gso.EncodeWire(b[24:pieceHeaderLen])
}

// parsePiece decodes a piece record's payload.
func parsePiece(b []byte) (p pieceHdr, data []byte, err error) {
	if len(b) < pieceHeaderLen {
		return p, nil, fmt.Errorf("piece of %d bytes: %w", len(b), errMalformed)
	}
	p.id = binary.BigEndian.Uint16(b[2:4])
	p.src, p.dst = getName(b[4:10]), getName(b[10:16])
	p.total = binary.BigEndian.Uint32(b[16:20])
	p.offset = binary.BigEndian.Uint32(b[20:24])
	_ = p.gso.DecodeWire(b[24:pieceHeaderLen])
	data = b[pieceHeaderLen:]
	switch {
	case p.src == mesh.UnknownPeerName || p.dst == mesh.UnknownPeerName:
		return p, nil, fmt.Errorf("piece without src or dst: %w", errMalformed)
	case p.total == 0 || p.total > maxSuperFrame:
		return p, nil, fmt.Errorf("super-frame of %d bytes: %w", p.total, errMalformed)
	case len(data) == 0 || uint64(p.offset)+uint64(len(data)) > uint64(p.total):
		return p, nil, fmt.Errorf("piece [%d,+%d) of a %d-byte super-frame: %w", p.offset, len(data), p.total, errMalformed)
	case !p.gso.IsGSO():
		return p, nil, fmt.Errorf("piece of a frame that is no super-frame: %w", errMalformed)
	}
	return p, data, nil
}

// Reassembly bounds, per neighbour. Memory: at most asmSlots buffers of asmHeadroom +
// maxSuperFrame bytes, taken only while pieces are out of order or missing.
const (
	// asmSlots: super-frames in flight at once. netem's 20 ms ± 5 ms with 25% reordering
	// mixes the pieces of up to ~6 consecutive super-frames in the VM lab.
	asmSlots = 8
	// asmWindow: ids (one bit each of a uint64) among which a piece may still arrive; an
	// id older than that is settled (put together or counted lost).
	asmWindow = 64
	// asmMaxPieces: a sender cuts a super-frame into at most one batch of datagrams.
	asmMaxPieces = batchDatagrams
	// asmTimeout: a super-frame still incomplete after this is lost; TCP's retransmission
	// (200 ms at least) has taken over by then anyway.
	asmTimeout = 250 * time.Millisecond
)

// asmSlot is one super-frame being put together.
type asmSlot struct {
	buf     []byte   // nil: the slot is free
	hdr     pieceHdr // what every piece must agree on: id, total, src, dst, gso
	pd      uint32   // the piece size, from a piece that is not the last one; 0 until then
	have    uint64   // bit k: piece k (bytes [k*pd, (k+1)*pd)) is in buf
	tailOff uint32   // the last piece, when it came before pd was known (tailLen 0: none)
	tailLen uint32
	started int64
}

// assembly is a neighbour's reassembly state; only the socket reader uses it.
type assembly struct {
	slots [asmSlots]asmSlot
	// top is one past the newest id seen, once idSeen; bit k of settled says that id
	// top-1-k was put together or counted lost, bit k of done that it was put together.
	top           uint16
	settled, done uint64
	idSeen        bool
}

// MaxGSO implements overlay.GSOForwarder: super-frames go whole to a neighbour that takes
// pieces, up to what one batch of datagrams carries.
func (s *Sleeve) MaxGSO(hop mesh.PeerName) int {
	n := (*s.peers.Load())[hop]
	if n == nil || !n.gso.on || !n.path.established.Load() {
		return 0
	}
	if until := n.gso.offUntil.Load(); until != 0 && time.Now().UnixNano() < until {
		return 0
	}
	return n.maxGSO()
}

// Losing one datagram loses a whole super-frame (~45 TCP segments): on a lossy path that
// multiplies what TCP must resend. The peer reports in its heartbeats how many of our
// super-frames it put together and how many it lost; when more than gsoLossPercent of
// them were lost since the last report, we send cut segments to it for a hold-off that
// doubles each time it happens again (from gsoHoldMin to gsoHoldMax), then try again.
const (
	gsoLossPercent = 5
	gsoLossMin     = 3 // losses in one report before we react: noise otherwise
	gsoHoldMin     = 30 * time.Second
	gsoHoldMax     = 10 * time.Minute
)

type gsoLossState struct {
	lastDone, lastLost uint32
	seen               bool
	hold               time.Duration
}

// gsoReport takes the peer's counts of our super-frames (cumulative, from a heartbeat).
func (r *reader) gsoReport(nb *neighbour, done, lost uint32) {
	st := &nb.gso.loss
	dDone, dLost := done-st.lastDone, lost-st.lastLost
	first := !st.seen
	st.lastDone, st.lastLost, st.seen = done, lost, true
	if first || dLost < gsoLossMin || uint64(dLost)*100 <= uint64(dDone+dLost)*gsoLossPercent {
		return
	}
	if until := nb.gso.offUntil.Load(); until != 0 && r.now < until {
		return // already off: losses in flight before it took effect
	}
	st.hold = min(max(2*st.hold, gsoHoldMin), gsoHoldMax)
	nb.gso.offUntil.Store(r.now + int64(st.hold))
	r.s.stats.gsoBackoffs.Add(1)
	// Full-size datagrams vanishing is also what a path MTU that shrank without telling
	// anyone (ICMP filtered) looks like: check it now rather than at the next re-probe.
	select {
	case nb.events.reprobe <- struct{}{}:
	default:
	}
	r.s.log.Info("sending cut TCP segments instead of whole super-frames: the path loses datagrams",
		logx.KeyPeer, nb.name.String(), logx.KeyLost, dLost, logx.KeyTotal, dDone+dLost, logx.KeyDuration, st.hold)
}

func (n *neighbour) pieceData() int { return n.bodyLimit() - recordHeaderLen - pieceHeaderLen }

func (n *neighbour) maxGSO() int {
	pd := n.pieceData()
	if pd < 256 {
		return 0 // a tiny path: pieces would be mostly headers
	}
	return min(pd*batchDatagrams, maxSuperFrame)
}

// packSuper puts the super-frame fr into b as pieces, each in a datagram of its own, and
// returns the batch to go on with (a fresh one if b had no room for all pieces, which must
// travel together). lend: fr's buffer may be sealed from directly (see pieceHdr).
func (n *neighbour) packSuper(b *batch, fr *overlay.Frame, limit int, locked, lend bool) (*batch, bool) {
	pd := limit - recordHeaderLen - pieceHeaderLen
	size := len(fr.Data)
	if pd < 256 || size > maxSuperFrame {
		return b, false
	}
	pieces := (size + pd - 1) / pd
	if pieces > len(b.bufs) {
		return b, false
	}
	if b.n+pieces > len(b.bufs) {
		n.sendOrSubmit(b, locked)
		b = n.getBatch(limit)
	}
	hdr := pieceHdr{on: true, id: uint16(n.gso.id.Add(1)), src: fr.Src, dst: fr.Dst, total: uint32(size), gso: fr.GSO}
	for off := 0; off < size; off += pd {
		end := min(off+pd, size)
		i := b.n
		b.n++
		hdr.offset = uint32(off)
		length := recordHeaderLen + pieceHeaderLen + end - off
		if lend {
			hdr.lent = true
			b.lentBuf[i], b.lentOff[i], b.lens[i] = fr.Buf, fr.Off+off-recordHeaderLen-pieceHeaderLen, length
		} else {
			p := putRecord(b.bufs[i][sealedHeaderLen:], 0, 0, pieceHeaderLen+end-off)
			hdr.put(p)
			copy(p[pieceHeaderLen:], fr.Data[off:end])
			b.lens[i] = length
		}
		b.pieces[i] = hdr
	}
	return b, true
}

// piece handles a piece record from nb; a completed super-frame is appended to r.done.
// Pieces that contradict what the super-frame's earlier pieces said (another size, an
// offset that is not a piece boundary, a piece twice) are refused as malformed: they come
// from a broken or hostile sender, never from reordering.
func (r *reader) piece(nb *neighbour, payload []byte) {
	s := r.s
	p, data, err := parsePiece(payload)
	if err != nil {
		s.stats.malformed.Add(1)
		return
	}
	a := &nb.gso.asm
	lost := a.expire(s, r.now)
	if !a.idSeen {
		// Ids before the first one seen were never ours to count.
		a.top, a.settled, a.done, a.idSeen = p.id+1, ^uint64(1), 0, true
	}
	age := a.top - 1 - p.id
	if age >= 1<<15 { // newer than any seen: slide the window
		lost += a.advance(s, p.id)
		age = 0
	}
	if lost > 0 {
		s.stats.gsoIncomplete.Add(uint64(lost))
		nb.gso.asmLost.Add(lost)
	}
	switch {
	case age >= asmWindow:
		return // long settled (counted lost by now): late, not hostile
	case a.done&(1<<age) != 0:
		s.stats.malformed.Add(1) // a piece of one put together already: a duplicate
		return
	case a.settled&(1<<age) != 0:
		return // its super-frame was counted lost already
	}
	sl := a.slotFor(s, nb, p, age, r.now)
	if sl == nil {
		return
	}
	if sl.hdr.total != p.total || sl.hdr.src != p.src || sl.hdr.dst != p.dst || sl.hdr.gso != p.gso {
		s.stats.malformed.Add(1)
		return
	}
	ok, tailRefused := sl.add(p.offset, data)
	if tailRefused {
		s.stats.malformed.Add(1)
	}
	if !ok {
		s.stats.malformed.Add(1)
		return
	}
	if sl.pd == 0 || sl.have != 1<<(sl.pieces()-1)<<1-1 {
		return // not complete yet
	}
	a.settled |= 1 << age
	a.done |= 1 << age
	buf, hdr := sl.buf, sl.hdr
	*sl = asmSlot{}
	nb.gso.asmDone.Add(1)
	r.held = append(r.held, buf) // back to the pool once the router is done with it
	r.done = append(r.done, overlay.Frame{Src: hdr.src, Dst: hdr.dst, GSO: hdr.gso,
		Data: buf[asmHeadroom : asmHeadroom+int(hdr.total)], Buf: buf, Off: asmHeadroom})
}

// advance makes id the newest id seen and returns how many super-frames that writes off:
// those that leave the window unsettled, including ids skipped so far that no piece of
// has come.
func (a *assembly) advance(s *Sleeve, id uint16) (lost uint32) {
	n := uint32(id - (a.top - 1)) // 1..1<<15
	if n >= asmWindow {
		lost = uint32(bits.OnesCount64(^a.settled)) + n - asmWindow
		a.settled, a.done = 0, 0
	} else {
		leaving := ^a.settled >> (asmWindow - n) // the n oldest bits
		lost = uint32(bits.OnesCount64(leaving))
		a.settled <<= n
		a.done <<= n
	}
	// The new ids but the one that came are unsettled: their pieces may still come.
	a.top = id + 1
	for i := range a.slots {
		if sl := &a.slots[i]; sl.buf != nil && a.top-1-sl.hdr.id >= asmWindow {
			s.putAsm(sl.buf) // counted above, with the unsettled ids leaving
			*sl = asmSlot{}
		}
	}
	return lost
}

// expire writes off the super-frames still incomplete after asmTimeout.
func (a *assembly) expire(s *Sleeve, now int64) (lost uint32) {
	for i := range a.slots {
		if sl := &a.slots[i]; sl.buf != nil && now-sl.started > int64(asmTimeout) {
			a.settle(s, sl)
			lost++
		}
	}
	return lost
}

// settle writes off sl's super-frame and frees the slot.
func (a *assembly) settle(s *Sleeve, sl *asmSlot) {
	if age := a.top - 1 - sl.hdr.id; age < asmWindow {
		a.settled |= 1 << age
	}
	s.putAsm(sl.buf)
	*sl = asmSlot{}
}

// slotFor returns the slot of p's super-frame (age: how far its id is behind the newest),
// taking a free one, or the one of the oldest super-frame, which is then lost. It returns
// nil when p's own super-frame is the oldest and so is written off instead.
func (a *assembly) slotFor(s *Sleeve, nb *neighbour, p pieceHdr, age uint16, now int64) *asmSlot {
	var free, oldest *asmSlot
	oldestAge := age
	for i := range a.slots {
		sl := &a.slots[i]
		if sl.buf == nil {
			if free == nil {
				free = sl
			}
			continue
		}
		if sl.hdr.id == p.id {
			return sl
		}
		if sa := a.top - 1 - sl.hdr.id; sa > oldestAge {
			oldest, oldestAge = sl, sa
		}
	}
	if free == nil {
		s.stats.gsoIncomplete.Add(1)
		nb.gso.asmLost.Add(1)
		if oldest == nil { // p's super-frame is the oldest: it gets no slot
			a.settled |= 1 << age
			return nil
		}
		a.settle(s, oldest)
		free = oldest
	}
	*free = asmSlot{buf: s.getAsm(), hdr: p, started: now}
	free.hdr.offset = 0
	return free
}

// pieces is how many pieces the super-frame has; only once pd is known.
func (sl *asmSlot) pieces() uint32 { return (sl.hdr.total + sl.pd - 1) / sl.pd }

// add puts the piece at off into the super-frame, and reports false if it contradicts the
// pieces so far. A last piece kept aside that the first other piece contradicts is dropped
// instead (tailRefused): pieces that are not the last are the many. The piece lies within
// total (parsePiece checked).
func (sl *asmSlot) add(off uint32, data []byte) (ok, tailRefused bool) {
	n := uint32(len(data))
	last := off+n == sl.hdr.total
	if sl.pd == 0 {
		switch {
		case last && off > 0:
			// The last piece, short: where the boundaries are is known only from a
			// piece that is not the last. Keep it aside until then.
			if sl.tailLen != 0 {
				return false, false
			}
			sl.tailOff, sl.tailLen = off, n
			copy(sl.buf[asmHeadroom+int(off):], data)
			return true, false
		case (sl.hdr.total+n-1)/n > asmMaxPieces:
			return false, false // a sender never cuts that small
		}
		sl.pd = n
		if sl.tailLen != 0 {
			if sl.tailOff%n != 0 || sl.tailLen > n {
				tailRefused = true
			} else {
				sl.have |= 1 << (sl.tailOff / n)
			}
			sl.tailOff, sl.tailLen = 0, 0
		}
	}
	if off%sl.pd != 0 || (!last && n != sl.pd) || n > sl.pd {
		return false, tailRefused
	}
	bit := uint64(1) << (off / sl.pd) // < asmMaxPieces: off < total <= pd*asmMaxPieces
	if sl.have&bit != 0 {
		return false, tailRefused // a piece twice
	}
	sl.have |= bit
	copy(sl.buf[asmHeadroom+int(off):], data)
	return true, tailRefused
}

func (s *Sleeve) getAsm() []byte {
	select {
	case b := <-s.asmPool:
		return b
	default:
		return make([]byte, asmHeadroom+maxSuperFrame)
	}
}

func (s *Sleeve) putAsm(b []byte) {
	select {
	case s.asmPool <- b:
	default:
	}
}
