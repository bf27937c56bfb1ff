package sleeve

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/weavemesh/weave/mesh"
	"github.com/weavemesh/weave/overlay"
	"github.com/weavemesh/weave/tap/frame"
)

var testGSO = frame.VirtioNetHdr{Flags: frame.VirtioNetHdrFNeedsCsum, GSOType: frame.VirtioNetHdrGSOTCPv4,
	HdrLen: 54, GSOSize: 1380, CsumStart: 34, CsumOffset: 16}

// pieceRecord is the record of bytes [off, off+len(data)) of a total-byte super-frame.
func pieceRecord(id uint16, src, dst mesh.PeerName, total, off int, data []byte) []byte {
	p := make([]byte, pieceHeaderLen+len(data))
	h := pieceHdr{id: id, src: src, dst: dst, total: uint32(total), offset: uint32(off), gso: testGSO}
	h.put(p)
	copy(p[pieceHeaderLen:], data)
	return record(0, 0, p)
}

type keepingReceiver struct{ frames []overlay.Frame }

func (k *keepingReceiver) Receive(_ mesh.PeerName, frames []overlay.Frame) {
	for _, f := range frames {
		f.Data = bytes.Clone(f.Data)
		k.frames = append(k.frames, f)
	}
}

// feed hands the reader one plain datagram per record, as the socket would.
func feed(r *reader, recs ...[]byte) {
	for _, rec := range recs {
		r.sizes[0] = copy(r.bufs[0], plainDatagram(rec))
		r.eps[0] = netip.MustParseAddrPort("192.0.2.9:6783")
		r.handle(1)
		r.deliverAll()
	}
}

// TestReassembly: pieces in order make one super-frame; reordered pieces too; a super-frame
// with a lost piece is counted lost when it times out, and one of which no piece came when
// its id leaves the window, while the complete ones around them still get through; hostile
// pieces are counted as malformed and never delivered.
func TestReassembly(t *testing.T) {
	s, r, _ := fuzzSleeve(t)
	recv := &keepingReceiver{}
	s.recv.Store(&recvBox{recv})
	payload := make([]byte, 3000)
	for i := range payload {
		payload[i] = byte(i)
	}
	const src, dst = mesh.PeerName(5), mesh.PeerName(6)
	var id uint16
	whole := func() [][]byte {
		id++
		return [][]byte{pieceRecord(id, src, dst, 3000, 0, payload[:1000]),
			pieceRecord(id, src, dst, 3000, 1000, payload[1000:2000]), pieceRecord(id, src, dst, 3000, 2000, payload[2000:])}
	}
	feed(r, whole()...)
	if len(recv.frames) != 1 || !bytes.Equal(recv.frames[0].Data, payload) || recv.frames[0].GSO != testGSO ||
		recv.frames[0].Src != src || recv.frames[0].Dst != dst {
		t.Fatalf("in-order pieces: delivered %d frames, want the super-frame", len(recv.frames))
	}
	// The middle piece lost: kept in flight; then a whole one.
	p := whole()
	feed(r, p[0], p[2])
	feed(r, whole()...)
	// Reordered: put together.
	p = whole()
	feed(r, p[0], p[2], p[1])
	feed(r, whole()...)
	// The first piece lost: kept in flight too.
	p = whole()
	feed(r, p[1], p[2])
	feed(r, whole()...)
	// Not a single piece of one came.
	whole()
	feed(r, whole()...)
	if len(recv.frames) != 6 {
		t.Errorf("delivered %d super-frames, want 6 (the whole and the reordered ones)", len(recv.frames))
	}
	if got := s.stats.gsoIncomplete.Load(); got != 0 {
		t.Errorf("lost super-frames counted %d before they could be known lost, want 0", got)
	}
	nb := (*s.peers.Load())[fuzzPlainPeer]
	inFlight := 0
	for i := range nb.gso.asm.slots {
		if sl := &nb.gso.asm.slots[i]; sl.buf != nil {
			inFlight++
			sl.started -= 2 * int64(asmTimeout)
		}
	}
	if inFlight != 2 {
		t.Errorf("%d super-frames in flight, want the 2 with a piece missing", inFlight)
	}
	// Timed out, those two are lost; the one without pieces when its id leaves the window.
	feed(r, whole()...)
	if got := s.stats.gsoIncomplete.Load(); got != 2 {
		t.Errorf("timed out super-frames counted %d, want 2", got)
	}
	for range asmWindow {
		feed(r, whole()...)
	}
	if got := s.stats.gsoIncomplete.Load(); got != 3 {
		t.Errorf("lost super-frames counted %d, want 3", got)
	}
	delivered := 6 + 1 + asmWindow
	if d, l := nb.gso.asmDone.Load(), nb.gso.asmLost.Load(); d != uint32(delivered) || l != 3 {
		t.Errorf("the peer's heartbeats would report %d received and %d lost, want %d and 3", d, l, delivered)
	}
	recv.frames = recv.frames[:0]
	before := s.stats.malformed.Load()
	hostile := [][]byte{
		pieceRecord(99, src, dst, 1000, 900, payload[:200]),    // beyond its total
		pieceRecord(99, src, dst, maxSuperFrame+1, 0, payload), // too big
		pieceRecord(99, 0, dst, 3000, 0, payload[:100]),        // no source
		pieceRecord(99, src, dst, 3000, 0, nil),                // no bytes
		record(0, 0, []byte{ctlPiece, 0, 1, 2}),                // short header
		pieceRecord(99, src, dst, 0, 0, payload[:10]),          // total 0
	}
	feed(r, hostile...)
	if got := s.stats.malformed.Load() - before; got != uint64(len(hostile)) {
		t.Errorf("hostile pieces counted malformed %d, want %d", got, len(hostile))
	}
	if len(recv.frames) != 0 {
		t.Errorf("a hostile piece was delivered: %d frames", len(recv.frames))
	}
}

// TestLossReportTurnsGSOOff: a heartbeat reporting that more than 5% of our super-frames
// were lost turns passthrough to that peer off for a while; small losses do not.
func TestLossReportTurnsGSOOff(t *testing.T) {
	s, r, _ := fuzzSleeve(t)
	nb := (*s.peers.Load())[fuzzPlainPeer]
	r.now = time.Now().UnixNano()
	r.gsoReport(nb, 1000, 50) // the first report is only a baseline
	r.gsoReport(nb, 2000, 52) // 2 lost of 1002: noise
	r.gsoReport(nb, 3000, 54)
	if nb.gso.offUntil.Load() != 0 || s.stats.gsoBackoffs.Load() != 0 {
		t.Fatalf("small losses turned gso off")
	}
	r.gsoReport(nb, 3100, 74) // 20 lost of 120
	if until := nb.gso.offUntil.Load(); until < r.now+int64(gsoHoldMin) || s.stats.gsoBackoffs.Load() != 1 {
		t.Fatalf("heavy loss did not turn gso off for %v (until %d, now %d)", gsoHoldMin, until, r.now)
	}
	r.gsoReport(nb, 3100, 94) // still in flight while off: no second back-off
	if s.stats.gsoBackoffs.Load() != 1 {
		t.Errorf("losses while off counted as a new back-off")
	}
	// After the hold-off, losses again: twice as long.
	r.now = nb.gso.offUntil.Load() + 1
	r.gsoReport(nb, 3200, 120)
	if until := nb.gso.offUntil.Load(); until < r.now+int64(2*gsoHoldMin) {
		t.Errorf("the second hold-off is not doubled")
	}
}

func FuzzPiece(f *testing.F) {
	f.Add(uint32(3000), uint32(0), []byte("abc"))
	f.Add(uint32(3), uint32(0), []byte("abc"))
	f.Add(uint32(maxSuperFrame), uint32(maxSuperFrame-1), []byte("z"))
	f.Fuzz(func(t *testing.T, total, off uint32, data []byte) {
		_, r, _ := fuzzSleeve(t)
		p := make([]byte, pieceHeaderLen+len(data))
		h := pieceHdr{src: 5, dst: 6, total: total, offset: off, gso: testGSO}
		h.put(p)
		copy(p[pieceHeaderLen:], data)
		if len(p) > 0xffff-recordHeaderLen {
			return
		}
		feed(r, record(0, 0, p)) // must not panic, whatever the numbers
	})
}
