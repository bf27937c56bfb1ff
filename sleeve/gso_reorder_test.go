package sleeve

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/weavemesh/weave/mesh"
)

// cutSuper returns the pieces of super-frame id (payload cut into pd-byte pieces), as a
// sender's packSuper would.
func cutSuper(id uint16, payload []byte, pd int) [][]byte {
	const src, dst = mesh.PeerName(5), mesh.PeerName(6)
	var recs [][]byte
	for off := 0; off < len(payload); off += pd {
		end := min(off+pd, len(payload))
		recs = append(recs, pieceRecord(id, src, dst, len(payload), off, payload[off:end]))
	}
	return recs
}

func testPayload(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i) ^ seed
	}
	return p
}

// TestReassemblyReordered: the network reorders the pieces of one super-frame (netem with
// jitter does, see docs/VMLAB.md): it is still put together, and no loss is counted.
func TestReassemblyReordered(t *testing.T) {
	s, r, _ := fuzzSleeve(t)
	recv := &keepingReceiver{}
	s.recv.Store(&recvBox{recv})
	payload := testPayload(3500, 0x5a)
	p := cutSuper(1, payload, 1000) // 4 pieces, the last one short
	feed(r, p[2], p[0], p[3], p[1])
	if len(recv.frames) != 1 || !bytes.Equal(recv.frames[0].Data, payload) || recv.frames[0].GSO != testGSO {
		t.Fatalf("reordered pieces: delivered %d frames, want the super-frame", len(recv.frames))
	}
	// The last (short) piece first: its offset is checked once the piece size is known.
	p = cutSuper(2, payload, 1000)
	feed(r, p[3], p[1], p[2], p[0])
	if len(recv.frames) != 2 || !bytes.Equal(recv.frames[1].Data, payload) {
		t.Fatalf("last piece first: delivered %d frames, want 2 super-frames", len(recv.frames))
	}
	if got := s.stats.gsoIncomplete.Load(); got != 0 {
		t.Errorf("reordered super-frames counted lost: %d", got)
	}
	if got := s.stats.malformed.Load(); got != 0 {
		t.Errorf("reordered pieces counted malformed: %d", got)
	}
	nb := (*s.peers.Load())[fuzzPlainPeer]
	if d, l := nb.gso.asmDone.Load(), nb.gso.asmLost.Load(); d != 2 || l != 0 {
		t.Errorf("the heartbeats would report %d received and %d lost, want 2 and 0", d, l)
	}
}

// TestReassemblyInterleaved: the pieces of consecutive super-frames arrive mixed (the later
// one's first piece before the earlier one's last): both are put together.
func TestReassemblyInterleaved(t *testing.T) {
	s, r, _ := fuzzSleeve(t)
	recv := &keepingReceiver{}
	s.recv.Store(&recvBox{recv})
	pa, pb, pc := testPayload(3000, 1), testPayload(2500, 2), testPayload(1800, 3)
	a, b, c := cutSuper(1, pa, 1000), cutSuper(2, pb, 1000), cutSuper(3, pc, 1000)
	feed(r, a[0], b[0], c[1], a[1], b[2], c[0], b[1], a[2])
	want := map[string]bool{string(pa): true, string(pb): true, string(pc): true}
	for _, f := range recv.frames {
		if !want[string(f.Data)] {
			t.Errorf("delivered a %d-byte frame that is none of the super-frames, or twice", len(f.Data))
		}
		delete(want, string(f.Data))
	}
	if len(want) != 0 {
		t.Errorf("%d of 3 interleaved super-frames not delivered", len(want))
	}
	if got := s.stats.gsoIncomplete.Load(); got != 0 {
		t.Errorf("interleaved super-frames counted lost: %d", got)
	}
}

// TestReassemblyHostilePieces: pieces that contradict the earlier pieces of their
// super-frame (an offset off the piece boundaries, overlapping, twice, another size, another
// total, a piece size no sender uses) are refused and counted malformed whatever order they
// come in, are never delivered, and do not keep the genuine pieces from being put together.
func TestReassemblyHostilePieces(t *testing.T) {
	const src, dst = mesh.PeerName(5), mesh.PeerName(6)
	payload := testPayload(3500, 7)
	junk := testPayload(3500, 0xee)
	id := uint16(0)
	for _, c := range []struct {
		name    string
		hostile func(id uint16) [][]byte
		before  bool // the hostile pieces come before the genuine ones (else after the first)
	}{
		{"offset off the boundaries", func(id uint16) [][]byte {
			return [][]byte{pieceRecord(id, src, dst, 3500, 500, junk[:1000])}
		}, false},
		{"overlapping the last piece", func(id uint16) [][]byte {
			return [][]byte{pieceRecord(id, src, dst, 3500, 2900, junk[:600])}
		}, false},
		{"a piece twice", func(id uint16) [][]byte {
			return [][]byte{pieceRecord(id, src, dst, 3500, 0, junk[:1000])}
		}, false},
		{"another piece size", func(id uint16) [][]byte {
			return [][]byte{pieceRecord(id, src, dst, 3500, 2000, junk[:500])}
		}, false},
		{"another total", func(id uint16) [][]byte {
			return [][]byte{pieceRecord(id, src, dst, 4000, 1000, junk[:1000])}
		}, false},
		{"a last piece longer than the pieces", func(id uint16) [][]byte {
			return [][]byte{pieceRecord(id, src, dst, 3500, 2000, junk[:1500])}
		}, false},
		{"tiny pieces", func(id uint16) [][]byte {
			return [][]byte{pieceRecord(id, src, dst, 3500, 0, junk[:10])}
		}, true},
		{"a last piece off the boundaries before the size is known", func(id uint16) [][]byte {
			return [][]byte{pieceRecord(id, src, dst, 3500, 3100, junk[:400])}
		}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, r, _ := fuzzSleeve(t)
			recv := &keepingReceiver{}
			s.recv.Store(&recvBox{recv})
			id++
			genuine := cutSuper(id, payload, 1000)
			hostile := c.hostile(id)
			var recs [][]byte
			if c.before {
				recs = append(append(recs, hostile...), genuine...)
			} else {
				recs = append(append(append(recs, genuine[0]), hostile...), genuine[1:]...)
			}
			feed(r, recs...)
			if got := s.stats.malformed.Load(); got != uint64(len(hostile)) {
				t.Errorf("malformed counted %d, want %d", got, len(hostile))
			}
			if len(recv.frames) != 1 || !bytes.Equal(recv.frames[0].Data, payload) {
				t.Errorf("delivered %d frames; want the genuine super-frame only", len(recv.frames))
			}
		})
	}
}

// TestReassemblyAllocatesNothing: once the buffer pool is warm, putting together
// super-frames whose pieces arrive reordered and interleaved allocates nothing.
func TestReassemblyAllocatesNothing(t *testing.T) {
	if internalRaceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	s, r, recv := fuzzSleeve(t)
	a, b := cutSuper(0, testPayload(9000, 1), 1200), cutSuper(0, testPayload(7000, 2), 1200)
	// b's first piece before a's last, each out of order: one socket batch.
	order := [][2]int{{0, 1}, {0, 0}, {1, 2}, {0, 3}, {1, 0}, {0, 2}, {1, 1}, {0, 4}, {1, 5}, {0, 6},
		{1, 3}, {0, 5}, {1, 4}, {0, 7}}
	var dgrams [][]byte
	var which []int
	for _, o := range order {
		rec := [][][]byte{a, b}[o[0]][o[1]]
		dgrams = append(dgrams, plainDatagram(rec))
		which = append(which, o[0])
	}
	if len(a) != 8 || len(b) != 6 {
		t.Fatalf("cut into %d and %d pieces, the order above wants 8 and 6", len(a), len(b))
	}
	const idAt = nameLen + recordHeaderLen + 2
	var id uint16
	run := func() {
		for i, d := range dgrams {
			r.sizes[i] = copy(r.bufs[i], d)
			binary.BigEndian.PutUint16(r.bufs[i][idAt:], id+uint16(which[i]))
		}
		id += 2
		r.handle(len(dgrams))
		r.deliverAll()
	}
	for range 10 {
		run()
	}
	before := recv.frames
	allocs := testing.AllocsPerRun(100, run)
	if got := recv.frames - before; got != 2*101 {
		t.Fatalf("delivered %d super-frames in 101 runs, want 2 each", got)
	}
	if allocs > 0 {
		t.Errorf("%.2f allocations per batch of reordered pieces, want none", allocs)
	}
	if st := s.Stats(); st.GSOIncomplete != 0 || st.Malformed != 0 {
		t.Errorf("incomplete %d, malformed %d; want none", st.GSOIncomplete, st.Malformed)
	}
}

// fuzzByte is byte pos of super-frame id in FuzzPieces: every piece of it carries these
// bytes at its offset, so a delivered super-frame must consist of them.
func fuzzByte(id uint16, pos int) byte { return byte(pos*7 + pos>>8 + int(id)*13) }

// FuzzPieces: any sequence of pieces (ids close together, any total, offset and size, so
// that they overlap, repeat, contradict and interleave) never panics, never delivers a
// super-frame with a byte that no accepted piece of it carried (a stale byte of a reused
// buffer, or another super-frame's), and never holds more than asmSlots buffers.
func FuzzPieces(f *testing.F) {
	// Seeds: a 3-piece super-frame reordered; two interleaved; a contradicting piece.
	// (total and size are stored less one: 0x0bb7 is 3000 bytes, 0x03e7 1000.)
	f.Add([]byte{1, 0x0b, 0xb7, 0x07, 0xd0, 0x03, 0xe7, 1, 0x0b, 0xb7, 0, 0, 0x03, 0xe7, 1, 0x0b, 0xb7, 0x03, 0xe8, 0x03, 0xe7})
	f.Add([]byte{1, 0x07, 0xcf, 0, 0, 0x03, 0xe7, 2, 0x07, 0xcf, 0x03, 0xe8, 0x03, 0xe7, 2, 0x07, 0xcf, 0, 0, 0x03, 0xe7,
		1, 0x07, 0xcf, 0x03, 0xe8, 0x03, 0xe7})
	f.Add([]byte{1, 0x0b, 0xb7, 0, 0, 0x03, 0xe7, 1, 0x0b, 0xb7, 0x01, 0xf4, 0x03, 0xe7, 200, 0, 1, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		s, r, _ := fuzzSleeve(t)
		recv := &keepingReceiver{}
		s.recv.Store(&recvBox{recv})
		nb := (*s.peers.Load())[fuzzPlainPeer]
		for ; len(ops) >= 7; ops = ops[7:] {
			id := uint16(ops[0])
			total := 1 + int(binary.BigEndian.Uint16(ops[1:3]))%maxSuperFrame
			off := int(binary.BigEndian.Uint16(ops[3:5])) % total
			n := 1 + int(binary.BigEndian.Uint16(ops[5:7]))%(total-off)
			p := make([]byte, pieceHeaderLen+n)
			gso := testGSO
			gso.GSOSize = id // tells the delivered super-frame's id
			h := pieceHdr{id: id, src: 5, dst: 6, total: uint32(total), offset: uint32(off), gso: gso}
			h.put(p)
			for i := range n {
				p[pieceHeaderLen+i] = fuzzByte(id, off+i)
			}
			feed(r, record(0, 0, p))
			inUse := 0
			for i := range nb.gso.asm.slots {
				if nb.gso.asm.slots[i].buf != nil {
					inUse++
				}
			}
			if inUse > asmSlots {
				t.Fatalf("%d reassembly buffers held", inUse)
			}
		}
		for _, fr := range recv.frames {
			for i, b := range fr.Data {
				if b != fuzzByte(fr.GSO.GSOSize, i) {
					t.Fatalf("super-frame %d (%d bytes) delivered with byte %d not from its pieces", fr.GSO.GSOSize, len(fr.Data), i)
				}
			}
		}
	})
}
