package tap

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"github.com/weavemesh/weave/tap/frame"
)

// buildUDP writes a UDP frame field by field, reusing buildFrame's Ethernet and IP layout.
func buildUDP(s superSpec) []byte {
	l3, l4, _ := s.offsets()
	b := make([]byte, l4+8+len(s.payload))
	copy(b, buildFrame(superSpec{v6: s.v6, vlan: s.vlan, srcMAC: s.srcMAC})[:l4])
	udpLen := 8 + len(s.payload)
	ip := b[l3:]
	if s.v6 {
		binary.BigEndian.PutUint16(ip[4:], uint16(udpLen))
		ip[6] = frame.ProtoUDP
	} else {
		binary.BigEndian.PutUint16(ip[2:], uint16(20+udpLen))
		binary.BigEndian.PutUint16(ip[4:], s.id)
		ip[9] = frame.ProtoUDP
		ip[10], ip[11] = 0, 0
		binary.BigEndian.PutUint16(ip[10:], ^refChecksum(ip[:20], 0))
	}
	u := b[l4:]
	binary.BigEndian.PutUint16(u[0:], s.srcPort)
	binary.BigEndian.PutUint16(u[2:], 443)
	binary.BigEndian.PutUint16(u[4:], uint16(udpLen))
	copy(u[8:], s.payload)
	var ph []byte
	if s.v6 {
		ph = append(ph, ip[8:40]...)
	} else {
		ph = append(ph, ip[12:20]...)
	}
	ph = append(ph, 0, 0, byte(udpLen>>8), byte(udpLen), 0, 0, 0, frame.ProtoUDP)
	c := ^refChecksum(u, uint32(refChecksum(ph, 0)))
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:], c)
	return b
}

func TestSegmentUDPMatchesReference(t *testing.T) {
	for _, v := range variants() {
		t.Run(v.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(21, uint64(len(v.name))))
			for iter := range 30 {
				s := randomSpec(rng, v.v6, v.vlan)
				s.optLen = 0
				mss := 100 + rng.IntN(1400)
				super := buildUDP(s)
				h := VirtioNetHdr{Flags: VirtioNetHdrFNeedsCsum, GSOType: VirtioNetHdrGSOUDPL4, GSOSize: uint16(mss)}
				var sup Super
				if err := PrepareRead(&h, super, &sup); err != nil {
					t.Fatalf("iter %d: PrepareRead: %v", iter, err)
				}
				nseg := (len(s.payload) + mss - 1) / mss
				if sup.Segments() != nseg {
					t.Fatalf("%d segments, want %d", sup.Segments(), nseg)
				}
				bufs, sizes := newBufs(nseg, Headroom+mss+100), make([]int, nseg)
				if n, err := Segment(&sup, 0, bufs, sizes, Headroom); n != nseg || err != nil {
					t.Fatalf("Segment = %d, %v", n, err)
				}
				for i := range nseg {
					seg := s
					seg.payload = s.payload[i*mss : min((i+1)*mss, len(s.payload))]
					seg.id = s.id + uint16(i)
					want := buildUDP(seg)
					if got := bufs[i][Headroom : Headroom+sizes[i]]; !bytes.Equal(got, want) {
						t.Fatalf("iter %d datagram %d/%d differs:\n got %x\nwant %x", iter, i, nseg, got[:min(60, len(got))], want[:min(60, len(want))])
					}
				}
			}
		})
	}
}

func TestUDPIsNotCoalesced(t *testing.T) {
	var frames [][]byte
	for i := range 3 {
		frames = append(frames, buildUDP(superSpec{payload: bytes.Repeat([]byte{byte(i)}, 500), srcPort: 9, srcMAC: 1, id: uint16(i)}))
	}
	bufs := segmentsToBufs(frames, 65535)
	w, err := NewCoalescer(4).Coalesce(bufs, Headroom)
	if err != nil || len(w) != 3 {
		t.Fatalf("Coalesce = %v, %v; UDP datagrams must be written one by one", w, err)
	}
	for i, kw := range w {
		if !bytes.Equal(bufs[kw.Index][Headroom:Headroom+kw.Len], frames[i]) {
			t.Fatalf("datagram %d changed", i)
		}
	}
}
