package sleeve_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/testutil"
	"github.com/weavemesh/weave/mesh"
	"github.com/weavemesh/weave/overlay"
	"github.com/weavemesh/weave/sleeve"
	"github.com/weavemesh/weave/tap/frame"
)

// superFrame builds a TCP/IPv4 super-frame as a TAP with TSO hands it over: payload bytes
// behind one set of headers, partial checksum, to be cut into mss-byte segments. It lies
// at offset headroom of the returned buffer.
func superFrame(dst, src [6]byte, payload, mss, headroom int) ([]byte, frame.VirtioNetHdr) {
	const hdr = 14 + 20 + 20
	buf := make([]byte, headroom+hdr+payload)
	f := buf[headroom:]
	copy(f[0:6], dst[:])
	copy(f[6:12], src[:])
	binary.BigEndian.PutUint16(f[12:14], frame.EtherTypeIPv4)
	ip := f[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+20+payload))
	binary.BigEndian.PutUint16(ip[4:], 7)
	ip[6] = 0x40 // DF
	ip[8], ip[9] = 64, frame.ProtoTCP
	copy(ip[12:16], []byte{10, 32, 0, 1})
	copy(ip[16:20], []byte{10, 32, 0, 2})
	binary.BigEndian.PutUint16(ip[10:], ^frame.Checksum(ip, 0))
	tcp := f[34:54]
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 5201)
	binary.BigEndian.PutUint32(tcp[4:], 1000)
	binary.BigEndian.PutUint32(tcp[8:], 1)
	tcp[12] = 5 << 4
	tcp[13] = frame.TCPFlagACK | frame.TCPFlagPSH
	binary.BigEndian.PutUint16(tcp[14:], 500)
	for i := range payload {
		f[hdr+i] = byte(i*7 + i>>8)
	}
	// CHECKSUM_PARTIAL: the field holds the pseudo-header sum, as the kernel leaves it.
	ps := frame.Fold(frame.PseudoHeaderSum(frame.ProtoTCP, ip[12:16], ip[16:20], uint16(20+payload)))
	binary.BigEndian.PutUint16(tcp[16:], ps)
	h := frame.VirtioNetHdr{Flags: frame.VirtioNetHdrFNeedsCsum, GSOType: frame.VirtioNetHdrGSOTCPv4,
		HdrLen: hdr, GSOSize: uint16(mss), CsumStart: 34, CsumOffset: 16}
	return buf, h
}

type frameLog struct {
	mu     sync.Mutex
	frames []overlay.Frame
}

func (c *frameLog) Receive(_ mesh.PeerName, frames []overlay.Frame) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range frames {
		f.Data = bytes.Clone(f.Data)
		f.Buf, f.Off = nil, 0
		c.frames = append(c.frames, f)
	}
}

func (c *frameLog) get() []overlay.Frame {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]overlay.Frame(nil), c.frames...)
}

// TestSuperFrameCrossesWhole: a 60 KB super-frame handed to the sleeve arrives at the peer
// as one frame with the same bytes and offload header, unsealed and with each cipher, sent
// both from the caller's buffer and from a queued copy.
func TestSuperFrameCrossesWhole(t *testing.T) {
	for _, c := range []struct {
		name, password string
		ciphers        []string
	}{{"plain", "", nil}, {"aes-gcm", "pw", []string{sleeve.CipherAESGCM}}, {"secretbox", "pw", []string{sleeve.CipherSecretbox}}} {
		t.Run(c.name, func(t *testing.T) {
			l := newLab(t, labOpts{n: 2, links: [][2]int{{0, 1}}, password: c.password,
				ciphers: [][]string{c.ciphers, c.ciphers}, capture: true})
			l.waitRoutes()
			n0, n1 := l.nodes[0], l.nodes[1]
			log := &frameLog{}
			defer sleeve.HookReceiverForTest(n1.s, log)()
			max := n0.s.MaxGSO(n1.m.Name())
			if max < 60054 {
				t.Fatalf("MaxGSO to a peer that offers gso = %d, want >= 60054", max)
			}
			buf, h := superFrame(mac(1, 1), mac(0, 1), 60000, 1380, 128)
			want := bytes.Clone(buf[128:])
			for len(n0.bind.sent) > 0 {
				<-n0.bind.sent // heartbeats and probes so far
			}
			n0.s.Forward(n1.m.Name(), []overlay.Frame{{Src: n0.m.Name(), Dst: n1.m.Name(), GSO: h,
				Data: buf[128:], Buf: buf, Off: 128}})
			testutil.Eventually(t, 5*time.Second, "the super-frame at node 1", func() error {
				if len(log.get()) == 0 {
					return fmt.Errorf("nothing delivered yet")
				}
				return nil
			})
			got := log.get()
			if len(got) != 1 {
				t.Fatalf("delivered %d frames, want 1", len(got))
			}
			f := got[0]
			if !bytes.Equal(f.Data, want) || f.GSO != h || f.Src != n0.m.Name() || f.Dst != n1.m.Name() {
				t.Fatalf("delivered %d bytes gso %+v %v->%v, want the %d-byte super-frame with %+v %v->%v",
					len(f.Data), f.GSO, f.Src, f.Dst, len(want), h, n0.m.Name(), n1.m.Name())
			}
			// It crossed as pieces that fill datagrams, not as 44 TCP segments.
			var datagrams, bytesSent int
			for len(n0.bind.sent) > 0 {
				d := <-n0.bind.sent
				datagrams++
				bytesSent += len(d)
			}
			if datagrams > 60054/1000+2 || bytesSent < 60054 {
				t.Errorf("sent %d datagrams (%d bytes) for a 60054-byte super-frame", datagrams, bytesSent)
			}
			if st := n1.s.Stats(); st.GSOIncomplete != 0 || st.Malformed != 0 {
				t.Errorf("receiver counted incomplete %d malformed %d", st.GSOIncomplete, st.Malformed)
			}
		})
	}
}

// TestSuperFrameCutForPeerWithoutGSO: a peer that does not offer gso gets MaxGSO 0, and a
// super-frame that reaches a bridge that takes no super-frames (the in-memory TAP) is cut
// by the router into TCP segments carrying the same bytes, each with valid checksums.
func TestSuperFrameCutForPeerWithoutGSO(t *testing.T) {
	l := newLab(t, labOpts{n: 2, links: [][2]int{{0, 1}}, noGSO: []bool{false, true}})
	l.waitRoutes()
	n0, n1 := l.nodes[0], l.nodes[1]
	if m := n1.s.MaxGSO(n0.m.Name()); m != 0 {
		t.Errorf("a sleeve with gso off offers MaxGSO %d", m)
	}
	if m := n0.s.MaxGSO(n1.m.Name()); m != 0 {
		t.Errorf("MaxGSO to a peer that does not offer gso = %d, want 0", m)
	}
	// Node 1's router delivers a super-frame that node 0 sent whole before gso was known
	// to be off there; the in-memory TAP takes no super-frames, so the router cuts it.
	l2 := newLab(t, labOpts{n: 2, links: [][2]int{{0, 1}}})
	l2.waitRoutes()
	a, b := l2.nodes[0], l2.nodes[1]
	const payload, mss = 20000, 1380
	buf, h := superFrame(mac(1, 1), mac(0, 1), payload, mss, 128)
	orig := bytes.Clone(buf[128:])
	a.s.Forward(b.m.Name(), []overlay.Frame{{Src: a.m.Name(), Dst: b.m.Name(), GSO: h, Data: buf[128:], Buf: buf, Off: 128}})
	var got []byte
	segs := 0
	for len(got) < payload {
		select {
		case f := <-b.tap.Written():
			p, err := frame.Parse(f)
			if err != nil || !p.HasTCP {
				t.Fatalf("segment %d does not parse as TCP: %v", segs, err)
			}
			ip := f[p.L3Off : p.L3Off+p.IP.HeaderLen]
			if frame.Checksum(ip, 0) != 0xffff {
				t.Errorf("segment %d: bad IPv4 header checksum", segs)
			}
			l4 := f[p.L4Off : p.L3Off+p.IP.TotalLen]
			ps := frame.PseudoHeaderSum(frame.ProtoTCP, f[p.L3Off+12:p.L3Off+16], f[p.L3Off+16:p.L3Off+20], uint16(len(l4)))
			if frame.Checksum(l4, ps) != 0xffff {
				t.Errorf("segment %d: bad TCP checksum", segs)
			}
			if seq := binary.BigEndian.Uint32(l4[4:]); seq != 1000+uint32(len(got)) {
				t.Errorf("segment %d: seq %d, want %d", segs, seq, 1000+len(got))
			}
			got = append(got, l4[p.TCP.HeaderLen:]...)
			segs++
		case <-time.After(5 * time.Second):
			t.Fatalf("got %d of %d payload bytes in %d segments", len(got), payload, segs)
		}
	}
	if segs != (payload+mss-1)/mss || !bytes.Equal(got, orig[54:]) {
		t.Errorf("cut into %d segments (want %d); payload equal: %v", segs, (payload+mss-1)/mss, bytes.Equal(got, orig[54:]))
	}
	if st := b.r.Stats(); st.GSOCut < 1 {
		t.Errorf("router counted %d cut super-frames, want at least 1", st.GSOCut)
	}
}
