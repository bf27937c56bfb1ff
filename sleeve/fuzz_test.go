package sleeve

import (
	"net/netip"
	"testing"

	"github.com/weavemesh/weave/mesh"
	"github.com/weavemesh/weave/overlay"
	"github.com/weavemesh/weave/udp/udptest"
)

type countingReceiver struct{ frames int }

func (c *countingReceiver) Receive(_ mesh.PeerName, frames []overlay.Frame) {
	for _, f := range frames {
		if len(f.Data) > 0 {
			_ = f.Data[len(f.Data)-1] // touch the bytes: they must be in bounds
		}
	}
	c.frames += len(frames)
}

const (
	fuzzPlainPeer  mesh.PeerName = 0x0a0000000001
	fuzzSealedPeer mesh.PeerName = 0x0a0000000002
	fuzzBoxPeer    mesh.PeerName = 0x0a0000000003
	fuzzConnID                   = 0x1234
)

// fuzzSleeve is a sleeve with three ready neighbours: unsealed, AES-GCM and secretbox (keys
// all zero, so seeds can be sealed by the test).
func fuzzSleeve(t testing.TB) (*Sleeve, *reader, *countingReceiver) {
	a, _ := udptest.NewPair()
	s, err := New(Config{Name: 0x0a00000000ff, Bind: a})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	recv := &countingReceiver{}
	s.recv.Store(&recvBox{recv})
	for _, p := range []struct {
		name   mesh.PeerName
		keys   bool
		cipher string
	}{{fuzzPlainPeer, false, ""}, {fuzzSealedPeer, true, CipherAESGCM}, {fuzzBoxPeer, true, CipherSecretbox}} {
		n := newNeighbour(s, mesh.ConnInfo{Peer: p.name, ConnID: fuzzConnID, HasKeys: p.keys,
			Features: map[string]string{FeatureCiphers: p.cipher}})
		if err := n.setupCrypto([]string{p.cipher}); p.keys && err != nil {
			t.Fatal(err)
		}
		ep := netip.MustParseAddrPort("192.0.2.9:6783")
		n.path.ep.Store(&ep)
		n.handshake.ready = true
		s.byName[p.name] = n
	}
	s.publishLocked()
	return s, newReader(s, 4096), recv
}

func plainDatagram(records ...[]byte) []byte {
	d := make([]byte, nameLen)
	putName(d, fuzzPlainPeer)
	for _, r := range records {
		d = append(d, r...)
	}
	return d
}

func record(src, dst mesh.PeerName, payload []byte) []byte {
	r := make([]byte, recordHeaderLen+len(payload))
	copy(putRecord(r, src, dst, len(payload)), payload)
	return r
}

func sealedDatagram(s *Sleeve, peer mesh.PeerName, seq uint64, body []byte) []byte {
	n := (*s.peers.Load())[peer]
	sl := sealer{name: peer, aead: n.crypto.open.aead, key: n.crypto.open.key, seq: seq - 1}
	out := make([]byte, sealedHeaderLen+len(body)+tagLen)
	if sl.aead != nil {
		copy(out[sealedHeaderLen:], body)
		return sl.seal(out, out[sealedHeaderLen:sealedHeaderLen+len(body)])
	}
	return sl.seal(out, body)
}

func FuzzDatagram(f *testing.F) {
	s, _, _ := fuzzSleeve(f)
	frame := make([]byte, 60)
	hb := []byte{ctlHeartbeat, 0, 0, 0, 0, 0, 0, 0x12, 0x34, hbHeardYou}
	f.Add(plainDatagram(record(5, 6, frame)))
	f.Add(plainDatagram(record(5, 6, frame), record(0, 0, hb)))
	f.Add(plainDatagram(record(0, 0, []byte{ctlProbe, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 5, 0xdc})))
	f.Add(sealedDatagram(s, fuzzSealedPeer, 1, record(5, 6, frame)))
	f.Add(sealedDatagram(s, fuzzBoxPeer, 1, record(0, 0, hb)))
	f.Add([]byte{0x0a, 0, 0, 0, 0, 1, 0, 0})
	f.Fuzz(func(t *testing.T, d []byte) {
		_, r, _ := fuzzSleeve(t)
		if len(d) > len(r.bufs[0]) {
			return
		}
		r.sizes[0] = copy(r.bufs[0], d)
		r.eps[0] = netip.MustParseAddrPort("192.0.2.9:6783")
		r.handle(1) // must not panic
		r.deliverAll()
	})
}

// TestDatagramDecoding checks what the fuzz seeds exercise: valid records are delivered,
// sealed ones only once, and garbage is counted.
func TestDatagramDecoding(t *testing.T) {
	s, r, recv := fuzzSleeve(t)
	feed := func(d []byte) {
		r.sizes[0] = copy(r.bufs[0], d)
		r.eps[0] = netip.MustParseAddrPort("192.0.2.9:6783")
		r.handle(1)
		r.deliverAll()
	}
	frame := make([]byte, 60)
	feed(plainDatagram(record(5, 6, frame), record(5, 6, frame)))
	if recv.frames != 2 {
		t.Fatalf("delivered %d frames, want 2", recv.frames)
	}
	for _, p := range []mesh.PeerName{fuzzSealedPeer, fuzzBoxPeer} {
		d := sealedDatagram(s, p, 7, record(5, 6, frame))
		feed(d)
		feed(d)
	}
	if st := s.Stats(); recv.frames != 4 || st.Replayed != 2 {
		t.Fatalf("delivered %d frames, replayed %d; want 4 and 2", recv.frames, st.Replayed)
	}
	feed(plainDatagram(record(5, 6, frame)[:10]))
	feed([]byte{1, 2})
	feed(plainDatagram(record(0, 6, frame)))
	if st := s.Stats(); st.Malformed != 3 || recv.frames != 4 {
		t.Fatalf("malformed %d, frames %d; want 3 and 4", st.Malformed, recv.frames)
	}
	n := (*s.peers.Load())[fuzzPlainPeer]
	feed(plainDatagram(record(0, 0, []byte{ctlHeartbeat, 0, 0, 0, 0, 0, 0, 0x12, 0x34, hbHeardYou})))
	if !n.path.heardFrom.Load() || !n.path.theyHeardUs.Load() {
		t.Fatal("heartbeat not taken")
	}
}

func TestReplayWindow(t *testing.T) {
	var w replayWindow
	accept := func(seq uint64) bool {
		if !w.check(seq) {
			return false
		}
		w.update(seq)
		return true
	}
	for _, seq := range []uint64{1, 2, 5, 3} {
		if !accept(seq) {
			t.Fatalf("fresh %d refused", seq)
		}
	}
	for _, seq := range []uint64{0, 1, 5, 3} {
		if accept(seq) {
			t.Fatalf("replayed %d accepted", seq)
		}
	}
	if !accept(4) || !accept(100000) {
		t.Fatal("late or far ahead refused")
	}
	if accept(100000-windowBits) || accept(6) {
		t.Fatal("too old accepted")
	}
	if !accept(100000 - 100) {
		t.Fatal("recent out-of-order refused")
	}
}

// FuzzOverlayControl: whatever a peer sends over the mesh as overlay control is refused or
// taken without panicking.
func FuzzOverlayControl(f *testing.F) {
	f.Add([]byte{msgHello, 1, 0x1a, 0x7f})
	f.Add([]byte{msgHello})
	f.Add([]byte{9, 9, 9})
	f.Fuzz(func(t *testing.T, msg []byte) {
		s, _, _ := fuzzSleeve(t)
		s.OverlayControl(fuzzPlainPeer, fuzzConnID, msg)
		s.OverlayControl(fuzzPlainPeer, fuzzConnID+1, msg) // unknown connection: stashed
		s.OverlayControl(0x0a0000000042, 7, msg)
	})
}
