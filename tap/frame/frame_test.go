package frame

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"testing"
)

// refChecksum is the textbook RFC 1071 loop the fast Sum is checked against.
func refChecksum(b []byte, initial uint32) uint16 {
	ac := initial
	for i := 0; i+1 < len(b); i += 2 {
		ac += uint32(b[i])<<8 | uint32(b[i+1])
		for ac > 0xffff {
			ac = ac>>16 + ac&0xffff
		}
	}
	if len(b)%2 == 1 {
		ac += uint32(b[len(b)-1]) << 8
	}
	for ac > 0xffff {
		ac = ac>>16 + ac&0xffff
	}
	return uint16(ac)
}

func TestChecksumMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 70000)
	for i := range 2000 {
		n := rng.IntN(200)
		if i%10 == 0 {
			n = rng.IntN(len(buf))
		}
		b := buf[:n]
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		if i%7 == 0 { // all ones stresses the carries
			for j := range b {
				b[j] = 0xff
			}
		}
		init := rng.Uint32N(0x10000)
		if got, want := Checksum(b, uint64(init)), refChecksum(b, init); got != want {
			t.Fatalf("len %d init %#x: Checksum = %#04x, reference %#04x", n, init, got, want)
		}
		// Chaining at an even split gives the same result.
		split := (rng.IntN(n+1) / 2) * 2
		if got, want := Fold(Sum(b[split:], Sum(b[:split], uint64(init)))), refChecksum(b, init); got != want {
			t.Fatalf("len %d split %d: chained = %#04x, reference %#04x", n, split, got, want)
		}
	}
}

func TestChecksumKnownIPv4Header(t *testing.T) {
	// The example header of RFC 1071 errata / Wikipedia "IPv4 header checksum".
	h := []byte{0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00,
		0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7}
	if got := ^Checksum(h, 0); got != 0xb861 {
		t.Fatalf("checksum = %#04x, want 0xb861", got)
	}
	binary.BigEndian.PutUint16(h[10:], 0xb861)
	if got := Checksum(h, 0); got != 0xffff {
		t.Fatalf("verifying a correct header gave %#04x, want 0xffff", got)
	}
}

func TestPseudoHeaderSum(t *testing.T) {
	src := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe}
	dst := src
	var ph []byte
	ph = append(ph, src...)
	ph = append(ph, dst...)
	ph = append(ph, 0, 0, 0xff, 0xff, 0, 0, 0, ProtoTCP)
	if got, want := Fold(PseudoHeaderSum(ProtoTCP, src, dst, 0xffff)), refChecksum(ph, 0); got != want {
		t.Fatalf("pseudo header sum %#04x, want %#04x", got, want)
	}
}

func TestMACString(t *testing.T) {
	m := MAC{0x0a, 0xbc, 0, 1, 0xff, 0x10}
	if got := m.String(); got != "0a:bc:00:01:ff:10" {
		t.Fatalf("String() = %q", got)
	}
	if m.IsMulticast() || !Broadcast.IsMulticast() {
		t.Fatal("multicast bit misread")
	}
}

// buildTCP builds an Ethernet/IP/TCP frame for the parser tests.
func buildTCP(vlan bool, v6 bool, payload int) []byte {
	var b []byte
	b = append(b, 1, 2, 3, 4, 5, 6, 0x0a, 0, 0, 0, 0, 1)
	if vlan {
		b = append(b, 0x81, 0x00, 0x20, 0x07)
	}
	l3 := len(b) + 2
	if v6 {
		b = append(b, 0x86, 0xdd)
		b = append(b, make([]byte, 40)...)
		b[l3] = 0x60
		binary.BigEndian.PutUint16(b[l3+4:], uint16(20+payload))
		b[l3+6] = ProtoTCP
		b[l3+7] = 64
		b[l3+8+15] = 1
		b[l3+24+15] = 2
	} else {
		b = append(b, 0x08, 0x00)
		b = append(b, make([]byte, 20)...)
		b[l3] = 0x45
		binary.BigEndian.PutUint16(b[l3+2:], uint16(40+payload))
		binary.BigEndian.PutUint16(b[l3+4:], 0x1234)
		binary.BigEndian.PutUint16(b[l3+6:], IPv4DontFragment)
		b[l3+8] = 64
		b[l3+9] = ProtoTCP
		copy(b[l3+12:], []byte{10, 0, 0, 1, 10, 0, 0, 2})
	}
	l4 := len(b)
	b = append(b, make([]byte, 20+payload)...)
	binary.BigEndian.PutUint16(b[l4:], 40000)
	binary.BigEndian.PutUint16(b[l4+2:], 5201)
	binary.BigEndian.PutUint32(b[l4+4:], 1000)
	binary.BigEndian.PutUint32(b[l4+8:], 2000)
	b[l4+12] = 5 << 4
	b[l4+13] = TCPFlagACK | TCPFlagPSH
	return b
}

func TestParse(t *testing.T) {
	tests := []struct {
		name     string
		frame    []byte
		wantErr  bool
		wantTCP  bool
		wantUDP  bool
		wantIP   bool
		ethType  uint16
		vlan     uint16
		l4Off    int
		src, dst netip.Addr
	}{
		{name: "ipv4 tcp", frame: buildTCP(false, false, 10), wantTCP: true, wantIP: true, ethType: EtherTypeIPv4,
			l4Off: 34, src: netip.MustParseAddr("10.0.0.1"), dst: netip.MustParseAddr("10.0.0.2")},
		{name: "ipv4 tcp vlan", frame: buildTCP(true, false, 0), wantTCP: true, wantIP: true, ethType: EtherTypeIPv4,
			vlan: 7, l4Off: 38, src: netip.MustParseAddr("10.0.0.1"), dst: netip.MustParseAddr("10.0.0.2")},
		{name: "ipv6 tcp", frame: buildTCP(false, true, 3), wantTCP: true, wantIP: true, ethType: EtherTypeIPv6,
			l4Off: 54, src: netip.MustParseAddr("::1"), dst: netip.MustParseAddr("::2")},
		{name: "ipv6 tcp vlan", frame: buildTCP(true, true, 3), wantTCP: true, wantIP: true, ethType: EtherTypeIPv6,
			vlan: 7, l4Off: 58, src: netip.MustParseAddr("::1"), dst: netip.MustParseAddr("::2")},
		{name: "arp", frame: append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 0x08, 0x06}, make([]byte, 28)...),
			ethType: EtherTypeARP},
		{name: "short ethernet", frame: []byte{1, 2, 3}, wantErr: true},
		{name: "short vlan", frame: []byte{1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6, 0x81, 0, 0}, wantErr: true},
		{name: "ipv4 truncated", frame: buildTCP(false, false, 10)[:40], wantErr: true},
		{name: "ipv6 truncated", frame: buildTCP(false, true, 10)[:60], wantErr: true},
		{name: "version mismatch", frame: func() []byte { b := buildTCP(false, false, 0); b[12], b[13] = 0x86, 0xdd; return b }(), wantErr: true},
		{name: "bad ihl", frame: func() []byte { b := buildTCP(false, false, 0); b[14] = 0x43; return b }(), wantErr: true},
		{name: "bad tcp offset", frame: func() []byte { b := buildTCP(false, false, 0); b[34+12] = 0xf0; return b }(), wantErr: true},
		{name: "ipv4 udp", frame: func() []byte {
			b := buildTCP(false, false, 0)
			b[23] = ProtoUDP
			binary.BigEndian.PutUint16(b[34+4:], 40)
			return b
		}(), wantIP: true, wantUDP: true, ethType: EtherTypeIPv4, l4Off: 34,
			src: netip.MustParseAddr("10.0.0.1"), dst: netip.MustParseAddr("10.0.0.2")},
		{name: "ipv6 udp truncated", frame: func() []byte {
			b := buildTCP(false, true, 0)[:14+40+4]
			b[14+6] = ProtoUDP
			binary.BigEndian.PutUint16(b[14+4:], 4)
			return b
		}(), wantErr: true},
		{name: "ipv4 fragment is not parsed as tcp", frame: func() []byte {
			b := buildTCP(false, false, 0)
			binary.BigEndian.PutUint16(b[20:], IPv4MoreFragments)
			return b
		}(), wantIP: true, ethType: EtherTypeIPv4, src: netip.MustParseAddr("10.0.0.1"), dst: netip.MustParseAddr("10.0.0.2")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Parse(tc.frame)
			if tc.wantErr {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("err = %v, want ErrMalformed", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if p.HasTCP != tc.wantTCP || p.HasIP != tc.wantIP || p.Eth.EtherType != tc.ethType || p.Eth.VLAN() != tc.vlan {
				t.Fatalf("got tcp=%v ip=%v type=%#x vlan=%d", p.HasTCP, p.HasIP, p.Eth.EtherType, p.Eth.VLAN())
			}
			if tc.wantIP && (p.IP.Src != tc.src || p.IP.Dst != tc.dst) {
				t.Fatalf("addresses %v -> %v", p.IP.Src, p.IP.Dst)
			}
			if p.HasUDP != tc.wantUDP || (tc.wantUDP && (p.L4Off != tc.l4Off || p.UDP.SrcPort != 40000 || p.UDP.Length != 40)) {
				t.Fatalf("udp %v %+v at %d", p.HasUDP, p.UDP, p.L4Off)
			}
			if tc.wantTCP {
				if p.L4Off != tc.l4Off || p.TCP.SrcPort != 40000 || p.TCP.DstPort != 5201 || p.TCP.Seq != 1000 ||
					p.TCP.Ack != 2000 || p.TCP.Flags != TCPFlagACK|TCPFlagPSH || p.TCP.HeaderLen != 20 {
					t.Fatalf("tcp %+v at %d", p.TCP, p.L4Off)
				}
			}
		})
	}
}

func TestParseAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation budgets do not hold under the race detector")
	}
	f := buildTCP(true, true, 100)
	if n := testing.AllocsPerRun(100, func() { _, _ = Parse(f) }); n != 0 {
		t.Fatalf("Parse allocates %v times", n)
	}
}

func FuzzParseEthernet(f *testing.F) {
	f.Add(buildTCP(false, false, 4))
	f.Add(buildTCP(true, true, 4))
	f.Add([]byte{1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6, 0x88, 0xa8, 0, 1, 0x81, 0})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := ParseEthernet(b)
		if err != nil {
			return
		}
		if e.HeaderLen > len(b) {
			t.Fatalf("header length %d beyond %d bytes", e.HeaderLen, len(b))
		}
	})
}

func FuzzParseIP(f *testing.F) {
	f.Add(buildTCP(false, false, 4)[14:])
	f.Add(buildTCP(false, true, 4)[14:])
	f.Add([]byte{0x4f, 0, 0, 20})
	f.Fuzz(func(t *testing.T, b []byte) {
		ip, err := ParseIP(b)
		if err != nil {
			return
		}
		if ip.HeaderLen > ip.TotalLen || ip.TotalLen > len(b) {
			t.Fatalf("header %d total %d in %d bytes", ip.HeaderLen, ip.TotalLen, len(b))
		}
		if ip.Protocol == ProtoTCP {
			_, _ = ParseTCP(b[ip.HeaderLen:ip.TotalLen])
		}
	})
}

func FuzzParse(f *testing.F) {
	f.Add(buildTCP(false, false, 4))
	f.Add(buildTCP(true, true, 0))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Parse(b)
		if err != nil {
			return
		}
		if p.HasTCP && p.L4Off+p.TCP.HeaderLen > len(b) {
			t.Fatalf("tcp header beyond frame")
		}
		if p.HasUDP && p.L4Off+UDPHeaderLen > len(b) {
			t.Fatalf("udp header beyond frame")
		}
	})
}

func BenchmarkChecksum(b *testing.B) {
	for _, n := range []int{64, 1500, 65535} {
		buf := make([]byte, n)
		for i := range buf {
			buf[i] = byte(i)
		}
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			b.SetBytes(int64(n))
			for b.Loop() {
				Checksum(buf, 0)
			}
		})
	}
}

func BenchmarkChecksumReference(b *testing.B) {
	buf := make([]byte, 1500)
	b.SetBytes(1500)
	for b.Loop() {
		refChecksum(buf, 0)
	}
}
