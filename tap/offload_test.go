package tap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/weavemesh/weave/tap/frame"
)

// superSpec describes a TCP frame built by buildFrame.
type superSpec struct {
	v6, vlan bool
	optLen   int // TCP options, multiple of 4
	flags    uint8
	id       uint16
	seq, ack uint32
	payload  []byte
	srcPort  uint16
	srcMAC   byte
}

// offsets returns the IP and TCP header offsets of a frame built from s.
func (s superSpec) offsets() (l3, l4, hdr int) {
	l3 = 14
	if s.vlan {
		l3 = 18
	}
	l4 = l3 + 20
	if s.v6 {
		l4 = l3 + 40
	}
	return l3, l4, l4 + 20 + s.optLen
}

// buildFrame writes the frame field by field, independently of the code under test.
func buildFrame(s superSpec) []byte {
	l3, l4, hdr := s.offsets()
	b := make([]byte, hdr+len(s.payload))
	copy(b, []byte{0x0a, 0, 0, 0, 0, 2, 0x0a, 0, 0, 0, 0, s.srcMAC})
	et := 12
	if s.vlan {
		binary.BigEndian.PutUint16(b[12:], frame.EtherTypeVLAN)
		binary.BigEndian.PutUint16(b[14:], 0x2005)
		et = 16
	}
	tcpLen := 20 + s.optLen + len(s.payload)
	if s.v6 {
		binary.BigEndian.PutUint16(b[et:], frame.EtherTypeIPv6)
		ip := b[l3:]
		binary.BigEndian.PutUint32(ip[0:], 0x6012345f)
		binary.BigEndian.PutUint16(ip[4:], uint16(tcpLen))
		ip[6], ip[7] = frame.ProtoTCP, 63
		copy(ip[8:], []byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1})
		copy(ip[24:], []byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2})
	} else {
		binary.BigEndian.PutUint16(b[et:], frame.EtherTypeIPv4)
		ip := b[l3:]
		ip[0], ip[1] = 0x45, 0x10
		binary.BigEndian.PutUint16(ip[2:], uint16(20+tcpLen))
		binary.BigEndian.PutUint16(ip[4:], s.id)
		binary.BigEndian.PutUint16(ip[6:], frame.IPv4DontFragment)
		ip[8], ip[9] = 64, frame.ProtoTCP
		copy(ip[12:], []byte{10, 32, 0, 1, 10, 32, 0, 2})
		binary.BigEndian.PutUint16(ip[10:], ^refChecksum(ip[:20], 0))
	}
	tcp := b[l4:]
	binary.BigEndian.PutUint16(tcp[0:], s.srcPort)
	binary.BigEndian.PutUint16(tcp[2:], 5201)
	binary.BigEndian.PutUint32(tcp[4:], s.seq)
	binary.BigEndian.PutUint32(tcp[8:], s.ack)
	tcp[12] = byte((20+s.optLen)/4) << 4
	tcp[13] = s.flags
	binary.BigEndian.PutUint16(tcp[14:], 501)
	for i := 0; i < s.optLen; i++ {
		tcp[20+i] = byte(i + 1)
	}
	copy(b[hdr:], s.payload)
	binary.BigEndian.PutUint16(tcp[16:], ^refChecksum(tcp[:tcpLen], refPseudo(b, s)))
	return b
}

// refPseudo sums the pseudo-header of the frame b built from s, the slow way.
func refPseudo(b []byte, s superSpec) uint32 {
	l3, l4, _ := s.offsets()
	var ph []byte
	if s.v6 {
		ph = append(ph, b[l3+8:l3+40]...)
	} else {
		ph = append(ph, b[l3+12:l3+20]...)
	}
	tcpLen := len(b) - l4
	ph = append(ph, 0, 0, byte(tcpLen>>8), byte(tcpLen), 0, 0, 0, frame.ProtoTCP)
	return uint32(refChecksum(ph, 0))
}

// refChecksum is the textbook RFC 1071 loop.
func refChecksum(b []byte, initial uint32) uint16 {
	ac := initial
	for i := 0; i+1 < len(b); i += 2 {
		ac += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		ac += uint32(b[len(b)-1]) << 8
	}
	for ac > 0xffff {
		ac = ac>>16 + ac&0xffff
	}
	return uint16(ac)
}

// refSegment is the reference segmentation: each segment is built from scratch by
// buildFrame with the fields TSO must produce.
func refSegment(s superSpec, mss int) [][]byte {
	var out [][]byte
	n := (len(s.payload) + mss - 1) / mss
	for i := 0; i < n; i++ {
		seg := s
		seg.payload = s.payload[i*mss : min((i+1)*mss, len(s.payload))]
		seg.id = s.id + uint16(i)
		seg.seq = s.seq + uint32(i*mss)
		if i != n-1 {
			seg.flags &^= frame.TCPFlagFIN | frame.TCPFlagPSH
		}
		if i != 0 {
			seg.flags &^= frame.TCPFlagCWR
		}
		out = append(out, buildFrame(seg))
	}
	return out
}

func randomSpec(rng *rand.Rand, v6, vlan bool) superSpec {
	s := superSpec{
		v6: v6, vlan: vlan,
		optLen:  []int{0, 12, 40}[rng.IntN(3)],
		flags:   frame.TCPFlagACK | []uint8{0, frame.TCPFlagPSH, frame.TCPFlagPSH | frame.TCPFlagFIN, frame.TCPFlagCWR}[rng.IntN(4)],
		id:      uint16(rng.Uint32()),
		seq:     rng.Uint32(),
		ack:     rng.Uint32(),
		srcPort: 40000,
		srcMAC:  1,
	}
	s.payload = make([]byte, 1+rng.IntN(60000))
	for i := range s.payload {
		s.payload[i] = byte(rng.Uint32())
	}
	return s
}

func newBufs(n, size int) [][]byte {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, size)
	}
	return bufs
}

func variants() []struct {
	name     string
	v6, vlan bool
} {
	return []struct {
		name     string
		v6, vlan bool
	}{{"ipv4", false, false}, {"ipv4-vlan", false, true}, {"ipv6", true, false}, {"ipv6-vlan", true, true}}
}

func TestSegmentMatchesReference(t *testing.T) {
	for _, v := range variants() {
		t.Run(v.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(7, uint64(len(v.name))))
			for iter := range 40 {
				s := randomSpec(rng, v.v6, v.vlan)
				mss := 500 + rng.IntN(9000)
				super := buildFrame(s)
				_, l4, _ := s.offsets()
				// The kernel leaves the pseudo-header sum in the checksum field; segmentation must not care.
				binary.BigEndian.PutUint16(super[l4+16:], 0xdead)
				h := VirtioNetHdr{Flags: VirtioNetHdrFNeedsCsum, GSOType: VirtioNetHdrGSOTCPv4, GSOSize: uint16(mss)}
				if v.v6 {
					h.GSOType = VirtioNetHdrGSOTCPv6
				}
				want := refSegment(s, mss)
				var sup Super
				if err := PrepareRead(&h, super, &sup); err != nil {
					t.Fatalf("iter %d: PrepareRead: %v", iter, err)
				}
				if sup.Segments() != len(want) {
					t.Fatalf("iter %d: %d segments, reference %d", iter, sup.Segments(), len(want))
				}
				// Read in uneven batches, as a device with pending segments does.
				const off = Headroom
				var got [][]byte
				for first := 0; first < sup.Segments(); {
					bufs := newBufs(1+rng.IntN(8), off+mss+200)
					sizes := make([]int, len(bufs))
					n, err := Segment(&sup, first, bufs, sizes, off)
					if err != nil || n == 0 {
						t.Fatalf("iter %d: Segment(first=%d) = %d, %v", iter, first, n, err)
					}
					for i := 0; i < n; i++ {
						got = append(got, bufs[i][off:off+sizes[i]])
					}
					first += n
				}
				for i := range want {
					if !bytes.Equal(got[i], want[i]) {
						t.Fatalf("iter %d segment %d/%d (mss %d) differs from the reference:\n got %x\nwant %x",
							iter, i, len(want), mss, got[i][:min(80, len(got[i]))], want[i][:min(80, len(want[i]))])
					}
				}
			}
		})
	}
}

func TestPrepareReadCompletesPartialChecksum(t *testing.T) {
	s := superSpec{flags: frame.TCPFlagACK, payload: []byte("hello, partial checksum"), srcPort: 1, srcMAC: 1}
	want := buildFrame(s)
	pkt := bytes.Clone(want)
	_, l4, _ := s.offsets()
	// What the kernel hands over for CHECKSUM_PARTIAL: the pseudo-header sum, uncomplemented.
	binary.BigEndian.PutUint16(pkt[l4+16:], uint16(refPseudo(pkt, s)))
	h := VirtioNetHdr{Flags: VirtioNetHdrFNeedsCsum, CsumStart: uint16(l4), CsumOffset: 16}
	var sup Super
	if err := PrepareRead(&h, pkt, &sup); err != nil {
		t.Fatal(err)
	}
	bufs, sizes := newBufs(2, 2048), make([]int, 2)
	n, err := Segment(&sup, 0, bufs, sizes, 16)
	if err != nil || n != 1 || !bytes.Equal(bufs[0][16:16+sizes[0]], want) {
		t.Fatalf("Segment = %d, %v; frame %x, want %x", n, err, bufs[0][16:16+sizes[0]], want)
	}
}

func TestPrepareReadRefuses(t *testing.T) {
	v4 := buildFrame(superSpec{flags: frame.TCPFlagACK, payload: make([]byte, 3000), srcMAC: 1})
	arp := append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 0x08, 0x06}, make([]byte, 28)...)
	tests := []struct {
		name string
		h    VirtioNetHdr
		pkt  []byte
	}{
		{"uso on a tcp frame", VirtioNetHdr{GSOType: VirtioNetHdrGSOUDPL4, GSOSize: 100}, v4},
		{"ufo not enabled", VirtioNetHdr{GSOType: VirtioNetHdrGSOUDP, GSOSize: 100}, v4},
		{"tcpv6 type on ipv4", VirtioNetHdr{GSOType: VirtioNetHdrGSOTCPv6, GSOSize: 100}, v4},
		{"gso size 0", VirtioNetHdr{GSOType: VirtioNetHdrGSOTCPv4}, v4},
		{"too many segments", VirtioNetHdr{GSOType: VirtioNetHdrGSOTCPv4, GSOSize: 1}, v4},
		{"tso on arp", VirtioNetHdr{GSOType: VirtioNetHdrGSOTCPv4, GSOSize: 100}, arp},
		{"checksum beyond frame", VirtioNetHdr{Flags: VirtioNetHdrFNeedsCsum, CsumStart: 40, CsumOffset: 200}, arp},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var sup Super
			if err := PrepareRead(&tc.h, bytes.Clone(tc.pkt), &sup); !errors.Is(err, ErrMalformedOffload) {
				t.Fatalf("err = %v, want ErrMalformedOffload", err)
			}
		})
	}
}

func TestNonIPFramePassesUntouched(t *testing.T) {
	arp := append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 0x08, 0x06}, bytes.Repeat([]byte{0xab}, 28)...)
	var sup Super
	if err := PrepareRead(&VirtioNetHdr{}, bytes.Clone(arp), &sup); err != nil {
		t.Fatal(err)
	}
	bufs, sizes := newBufs(1, 200), make([]int, 1)
	if n, err := Segment(&sup, 0, bufs, sizes, 20); n != 1 || err != nil || !bytes.Equal(bufs[0][20:20+sizes[0]], arp) {
		t.Fatalf("read path changed an ARP frame: %d %v %x", n, err, bufs[0][20:20+sizes[0]])
	}
	c := NewCoalescer(4)
	wbufs := [][]byte{append(make([]byte, Headroom), arp...), append(make([]byte, Headroom), arp...)}
	w, err := c.Coalesce(wbufs, Headroom)
	if err != nil || len(w) != 2 {
		t.Fatalf("Coalesce = %v, %v", w, err)
	}
	for i, kw := range w {
		if kw.Segs != 1 || !bytes.Equal(wbufs[kw.Index][Headroom:Headroom+kw.Len], arp) ||
			!bytes.Equal(wbufs[kw.Index][Headroom-VirtioNetHdrLen:Headroom], make([]byte, VirtioNetHdrLen)) {
			t.Fatalf("write %d changed an ARP frame or its header: %+v", i, kw)
		}
	}
}

// segmentsToBufs puts frames in buffers with headroom and room to coalesce.
func segmentsToBufs(frames [][]byte, capacity int) [][]byte {
	bufs := make([][]byte, len(frames))
	for i, f := range frames {
		b := make([]byte, Headroom+len(f), Headroom+max(capacity, len(f)))
		copy(b[Headroom:], f)
		bufs[i] = b
	}
	return bufs
}

// checkSuper verifies that the coalesced write w equals the super-frame built from s, with a
// partial checksum and the GSO header, and that segmenting it again gives the segments back.
func checkSuper(t *testing.T, bufs [][]byte, w KernelWrite, s superSpec, mss int) {
	t.Helper()
	got := bufs[w.Index][Headroom : Headroom+w.Len]
	want := buildFrame(s)
	l3, l4, hdr := s.offsets()
	binary.BigEndian.PutUint16(want[l4+16:], uint16(refPseudo(want, s)))
	if !s.v6 {
		// The run keeps the head's IP ID.
		binary.BigEndian.PutUint16(want[l3+4:], s.id)
		want[l3+10], want[l3+11] = 0, 0
		binary.BigEndian.PutUint16(want[l3+10:], ^refChecksum(want[l3:l3+20], 0))
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("coalesced frame differs from the super-frame:\n got %x\nwant %x", got[:min(len(got), 100)], want[:min(len(want), 100)])
	}
	var h VirtioNetHdr
	if err := h.Decode(bufs[w.Index][Headroom-VirtioNetHdrLen:]); err != nil {
		t.Fatal(err)
	}
	wantType := uint8(VirtioNetHdrGSOTCPv4)
	if s.v6 {
		wantType = VirtioNetHdrGSOTCPv6
	}
	if h != (VirtioNetHdr{Flags: VirtioNetHdrFNeedsCsum, GSOType: wantType, HdrLen: uint16(hdr), GSOSize: uint16(mss),
		CsumStart: uint16(l4), CsumOffset: 16}) {
		t.Fatalf("virtio header %+v", h)
	}
	// Round trip through the read path.
	var sup Super
	if err := PrepareRead(&h, bytes.Clone(got), &sup); err != nil {
		t.Fatal(err)
	}
	ref := refSegment(s, mss)
	out, sizes := newBufs(len(ref), 70000), make([]int, len(ref))
	if n, err := Segment(&sup, 0, out, sizes, 0); n != len(ref) || err != nil {
		t.Fatalf("resegment: %d, %v", n, err)
	}
	for i := range ref {
		if !bytes.Equal(out[i][:sizes[i]], ref[i]) {
			t.Fatalf("round trip segment %d differs", i)
		}
	}
}

func TestCoalesceMatchesReference(t *testing.T) {
	for _, v := range variants() {
		t.Run(v.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(9, uint64(len(v.name))))
			c := NewCoalescer(IdealBatchSize)
			for iter := range 40 {
				s := randomSpec(rng, v.v6, v.vlan)
				s.flags = frame.TCPFlagACK | []uint8{0, frame.TCPFlagPSH}[iter%2]
				mss := 500 + rng.IntN(3000)
				segs := refSegment(s, mss)
				bufs := segmentsToBufs(segs, 65535+18)
				w, err := c.Coalesce(bufs, Headroom)
				if err != nil {
					t.Fatal(err)
				}
				if len(segs) == 1 {
					if len(w) != 1 || w[0].Segs != 1 || !bytes.Equal(bufs[0][Headroom:Headroom+w[0].Len], segs[0]) {
						t.Fatalf("a lone segment was changed: %+v", w)
					}
					continue
				}
				if len(w) != 1 || w[0].Segs != len(segs) || w[0].Index != 0 {
					t.Fatalf("iter %d: %d segments gave writes %+v, want one", iter, len(segs), w)
				}
				checkSuper(t, bufs, w[0], s, mss)
			}
		})
	}
}

func TestCoalesceInterleavedFlows(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	mk := func(port uint16, mac byte, v6 bool) (superSpec, [][]byte) {
		s := randomSpec(rng, v6, false)
		s.optLen, s.flags, s.srcPort, s.srcMAC = 12, frame.TCPFlagACK, port, mac
		s.payload = make([]byte, 4000)
		for i := range s.payload {
			s.payload[i] = byte(rng.Uint32())
		}
		return s, refSegment(s, 1000)
	}
	sa, a := mk(1000, 1, false)
	sb, b := mk(2000, 1, true)
	sc, c := mk(1000, 2, false) // same IPs and ports as a, other source MAC: another flow at L2
	arp := append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 0x08, 0x06}, make([]byte, 28)...)
	frames := [][]byte{a[0], b[0], arp, c[0], a[1], b[1], c[1], a[2], b[2], c[2], a[3], b[3], c[3]}
	bufs := segmentsToBufs(frames, 65535)
	co := NewCoalescer(16)
	w, err := co.Coalesce(bufs, Headroom)
	if err != nil {
		t.Fatal(err)
	}
	if len(w) != 4 || w[0].Index != 0 || w[1].Index != 1 || w[2].Index != 2 || w[3].Index != 3 {
		t.Fatalf("writes %+v, want heads 0,1,2(arp),3", w)
	}
	checkSuper(t, bufs, w[0], sa, 1000)
	checkSuper(t, bufs, w[1], sb, 1000)
	checkSuper(t, bufs, w[3], sc, 1000)
	if !bytes.Equal(bufs[2][Headroom:Headroom+w[2].Len], arp) {
		t.Fatal("arp frame changed")
	}
}

func TestCoalesceRefuses(t *testing.T) {
	base := superSpec{flags: frame.TCPFlagACK, seq: 100, ack: 7, srcPort: 1, srcMAC: 1, payload: make([]byte, 3000), optLen: 12}
	segs := func(mut func(i int, s *superSpec)) [][]byte {
		var out [][]byte
		for i := range 3 {
			s := base
			s.payload = base.payload[:1000]
			s.seq = base.seq + uint32(i*1000)
			s.id = uint16(i)
			if mut != nil {
				mut(i, &s)
			}
			out = append(out, buildFrame(s))
		}
		return out
	}
	tests := []struct {
		name     string
		frames   [][]byte
		capacity int
		wantSegs []int
	}{
		{"in order", segs(nil), 65535, []int{3}},
		{"gap in sequence", segs(func(i int, s *superSpec) {
			if i == 2 {
				s.seq += 1
			}
		}), 65535, []int{2, 1}},
		{"other ack", segs(func(i int, s *superSpec) {
			if i >= 1 {
				s.ack++
			}
		}), 65535, []int{1, 2}},
		{"push closes the run", segs(func(i int, s *superSpec) {
			if i == 0 {
				s.flags |= frame.TCPFlagPSH
			}
		}), 65535, []int{1, 2}},
		{"short segment closes the run", segs(func(i int, s *superSpec) {
			if i == 0 {
				s.payload = s.payload[:999]
			}
		}), 65535, []int{1, 2}},
		{"bigger segment than the first", segs(func(i int, s *superSpec) {
			if i == 1 {
				s.payload = make([]byte, 1001)
			}
		}), 65535, []int{1, 1, 1}},
		{"syn and fin are not coalesced", segs(func(i int, s *superSpec) {
			if i == 1 {
				s.flags |= frame.TCPFlagFIN
			}
		}), 65535, []int{1, 1, 1}},
		{"other ip version", segs(func(i int, s *superSpec) {
			if i == 2 {
				s.v6 = true
			}
		}), 65535, []int{2, 1}},
		{"no capacity", segs(nil), 0, []int{1, 1, 1}},
		{"capacity for one more", segs(nil), 2000 + 66, []int{2, 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bufs := segmentsToBufs(tc.frames, tc.capacity)
			w, err := NewCoalescer(4).Coalesce(bufs, Headroom)
			if err != nil {
				t.Fatal(err)
			}
			var got []int
			for _, kw := range w {
				got = append(got, kw.Segs)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.wantSegs) {
				t.Fatalf("segments per write %v, want %v", got, tc.wantSegs)
			}
		})
	}
}

func TestOffloadAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation budgets do not hold under the race detector")
	}
	rng := rand.New(rand.NewPCG(5, 6))
	s := randomSpec(rng, false, true)
	s.flags = frame.TCPFlagACK
	s.payload = s.payload[:min(len(s.payload), 40000)]
	super := buildFrame(s)
	segs := refSegment(s, 1448)
	bufs := newBufs(len(segs), Headroom+2000)
	sizes := make([]int, len(bufs))
	h := VirtioNetHdr{GSOType: VirtioNetHdrGSOTCPv4, GSOSize: 1448}
	var sup Super
	if n := testing.AllocsPerRun(50, func() {
		if err := PrepareRead(&h, super, &sup); err != nil {
			t.Fatal(err)
		}
		if _, err := Segment(&sup, 0, bufs, sizes, Headroom); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("segmentation allocates %v times per super-frame", n)
	}
	c := NewCoalescer(IdealBatchSize)
	wbufs := segmentsToBufs(segs, 65535+18)
	if n := testing.AllocsPerRun(50, func() {
		for i, f := range segs {
			copy(wbufs[i][Headroom:], f)
		}
		if w, err := c.Coalesce(wbufs, Headroom); err != nil || len(w) != 1 {
			t.Fatalf("Coalesce = %v, %v", w, err)
		}
	}); n != 0 {
		t.Fatalf("coalescing allocates %v times per batch", n)
	}
}

func FuzzVnetHeader(f *testing.F) {
	// Small seeds: the fuzzer slows to a crawl on inputs of several KiB.
	s := superSpec{flags: frame.TCPFlagACK | frame.TCPFlagPSH, payload: make([]byte, 300), srcMAC: 1, optLen: 12}
	v4 := buildFrame(s)
	s.v6, s.vlan = true, true
	v6 := buildFrame(s)
	hdr := func(h VirtioNetHdr) []byte { b := make([]byte, VirtioNetHdrLen); h.Encode(b); return b }
	f.Add(append(hdr(VirtioNetHdr{GSOType: VirtioNetHdrGSOTCPv4, GSOSize: 100}), v4...))
	f.Add(append(hdr(VirtioNetHdr{GSOType: VirtioNetHdrGSOTCPv6 | VirtioNetHdrGSOECN, GSOSize: 7}), v6...))
	f.Add(append(hdr(VirtioNetHdr{Flags: VirtioNetHdrFNeedsCsum, CsumStart: 34, CsumOffset: 16}), v4...))
	f.Add(append(hdr(VirtioNetHdr{GSOType: VirtioNetHdrGSOUDPL4, GSOSize: 50}), buildUDP(superSpec{payload: make([]byte, 200), srcMAC: 1})...))
	f.Add([]byte{1, 2, 3})
	bufs := newBufs(8, 1600)
	sizes := make([]int, 8)
	f.Fuzz(func(t *testing.T, b []byte) {
		var h VirtioNetHdr
		if err := h.Decode(b); err != nil {
			return
		}
		if err := ValidateGSO(&h, b[VirtioNetHdrLen:]); err != nil && !errors.Is(err, ErrMalformedOffload) {
			t.Fatalf("ValidateGSO error %v does not wrap ErrMalformedOffload", err)
		}
		var sup Super
		if err := PrepareRead(&h, b[VirtioNetHdrLen:], &sup); err != nil {
			if !errors.Is(err, ErrMalformedOffload) {
				t.Fatalf("error %v does not wrap ErrMalformedOffload", err)
			}
			return
		}
		for first := 0; first < sup.Segments(); {
			n, err := Segment(&sup, first, bufs, sizes, 32)
			if err != nil || n == 0 {
				return // too big for the buffers: the device drops and counts it
			}
			for i := 0; i < n; i++ {
				if sup.hdr > 0 {
					p, err := frame.Parse(bufs[i][32 : 32+sizes[i]])
					if err != nil || !(p.HasTCP || p.HasUDP) {
						t.Fatalf("segment %d does not parse: %v", first+i, err)
					}
				}
			}
			first += n
		}
	})
}

func FuzzCoalesce(f *testing.F) {
	s := superSpec{flags: frame.TCPFlagACK, payload: make([]byte, 300), srcMAC: 1, optLen: 12}
	var seed []byte
	for _, seg := range refSegment(s, 100) {
		seed = binary.BigEndian.AppendUint16(seed, uint16(len(seg)))
		seed = append(seed, seg...)
	}
	f.Add(seed)
	f.Add([]byte{0, 3, 1, 2, 3})
	c := NewCoalescer(8)
	f.Fuzz(func(t *testing.T, b []byte) {
		var frames [][]byte
		for len(b) >= 2 && len(frames) < 16 {
			n := min(int(binary.BigEndian.Uint16(b)), len(b)-2)
			frames = append(frames, b[2:2+n])
			b = b[2+n:]
		}
		bufs := segmentsToBufs(frames, 4000)
		w, err := c.Coalesce(bufs, Headroom)
		if err != nil {
			t.Fatal(err)
		}
		segs := 0
		for _, kw := range w {
			segs += kw.Segs
			if kw.Len > cap(bufs[kw.Index])-Headroom {
				t.Fatalf("write beyond the buffer")
			}
		}
		if segs != len(frames) {
			t.Fatalf("%d frames in, %d out", len(frames), segs)
		}
	})
}

func BenchmarkSegment(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 1))
	s := randomSpec(rng, false, false)
	s.payload = make([]byte, 65000)
	super := buildFrame(s)
	h := VirtioNetHdr{GSOType: VirtioNetHdrGSOTCPv4, GSOSize: 1448}
	bufs := newBufs(IdealBatchSize, Headroom+1600)
	sizes := make([]int, len(bufs))
	b.SetBytes(int64(len(super)))
	for b.Loop() {
		var sup Super
		if err := PrepareRead(&h, super, &sup); err != nil {
			b.Fatal(err)
		}
		if _, err := Segment(&sup, 0, bufs, sizes, Headroom); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCoalesce(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 1))
	s := randomSpec(rng, false, false)
	s.flags = frame.TCPFlagACK
	s.payload = make([]byte, 1448*45)
	segs := refSegment(s, 1448)
	bufs := segmentsToBufs(segs, 65535+18)
	c := NewCoalescer(IdealBatchSize)
	b.SetBytes(int64(len(s.payload)))
	for b.Loop() {
		for i, f := range segs {
			copy(bufs[i][Headroom:], f) // restore the headers the last run rewrote
		}
		if _, err := c.Coalesce(bufs, Headroom); err != nil {
			b.Fatal(err)
		}
	}
}
