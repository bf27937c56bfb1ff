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
// All pieces of a super-frame go out in one batch (one sendmmsg, in order), so a receiver
// sees them in order unless the network reorders or loses one; then the partial
// super-frame is dropped and counted, and TCP recovers as from any loss.

import (
	"encoding/binary"
	"fmt"
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

// assembly is a neighbour's super-frame being put together; only the socket reader uses it.
type assembly struct {
	buf []byte // nil: none in progress
	hdr pieceHdr
	got uint32
	// nextID is the id expected of the next super-frame's first piece, once idSeen.
	nextID uint16
	idSeen bool
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

// piece handles a piece record from nb; a completed super-frame is appended to r.frames.
func (r *reader) piece(nb *neighbour, payload []byte) {
	s := r.s
	p, data, err := parsePiece(payload)
	if err != nil {
		s.stats.malformed.Add(1)
		return
	}
	a := &nb.gso.asm
	if p.offset == 0 {
		lost := uint32(0)
		if a.buf != nil && a.got > 0 {
			lost++ // the previous one lost its tail
		}
		if gap := p.id - a.nextID; a.idSeen && gap < 1<<15 {
			lost += uint32(gap) // super-frames of which not even the first piece came
		}
		a.nextID, a.idSeen = p.id+1, true
		if lost > 0 {
			s.stats.gsoIncomplete.Add(uint64(lost))
			nb.gso.asmLost.Add(lost)
		}
		if a.buf == nil {
			a.buf = s.getAsm()
		}
		a.hdr, a.got = p, 0
	} else if a.buf == nil || a.got != p.offset || a.hdr.id != p.id || a.hdr.total != p.total ||
		a.hdr.src != p.src || a.hdr.dst != p.dst {
		if a.got > 0 { // a piece was lost or came out of order
			s.stats.gsoIncomplete.Add(1)
			nb.gso.asmLost.Add(1)
			a.got = 0
		}
		return // (one whose first piece never came is counted by the id gap)
	}
	copy(a.buf[asmHeadroom+int(p.offset):], data)
	a.got += uint32(len(data))
	if a.got < a.hdr.total {
		return
	}
	buf := a.buf
	a.buf, a.got = nil, 0
	nb.gso.asmDone.Add(1)
	r.held = append(r.held, buf) // back to the pool once the router is done with it
	r.done = append(r.done, overlay.Frame{Src: a.hdr.src, Dst: a.hdr.dst, GSO: a.hdr.gso,
		Data: buf[asmHeadroom : asmHeadroom+int(a.hdr.total)], Buf: buf, Off: asmHeadroom})
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
