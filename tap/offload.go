package tap

// Userspace TSO and GRO for a TAP opened with IFF_VNET_HDR.
//
// Every read from such a device starts with a virtio_net_hdr. With TUNSETOFFLOAD(CSUM|TSO4|
// TSO6, and USO4|USO6 on kernels >= 6.2) the kernel may hand over a TCP or UDP "super-frame"
// of up to 64 KiB (gso_type TCPV4/TCPV6/UDP_L4, gso_size = MSS or datagram payload size,
// checksum left partial); Segment cuts it into wire-sized frames with complete
// checksums, because the frames leave the host through the sleeve, which cannot carry the
// virtio header. In the other direction, Coalescer merges consecutive in-order TCP segments of
// one flow back into a super-frame so the kernel receives one write instead of ~45 (GRO).
//
// Unlike wireguard-go (a TUN, IP packets), frames here are Ethernet: headers are parsed from
// the Ethernet header (one VLAN tag allowed), coalescing also matches both MACs and the tag,
// and anything that is not plain TCP over IPv4/IPv6 passes through untouched.

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/weavemesh/weave/tap/frame"
)

// The virtio-net header and its constants live in package frame (the sleeve carries the
// header with a super-frame); these names keep package tap's API.
const (
	VirtioNetHdrLen = frame.VirtioNetHdrLen

	VirtioNetHdrFNeedsCsum = frame.VirtioNetHdrFNeedsCsum
	VirtioNetHdrFDataValid = frame.VirtioNetHdrFDataValid

	VirtioNetHdrGSONone  = frame.VirtioNetHdrGSONone
	VirtioNetHdrGSOTCPv4 = frame.VirtioNetHdrGSOTCPv4
	VirtioNetHdrGSOUDP   = frame.VirtioNetHdrGSOUDP
	VirtioNetHdrGSOTCPv6 = frame.VirtioNetHdrGSOTCPv6
	VirtioNetHdrGSOUDPL4 = frame.VirtioNetHdrGSOUDPL4
	VirtioNetHdrGSOECN   = frame.VirtioNetHdrGSOECN
)

// VirtioNetHdr is struct virtio_net_hdr, see frame.VirtioNetHdr.
type VirtioNetHdr = frame.VirtioNetHdr

// maxSegments bounds how many frames one super-frame may expand into: a hostile gso_size of 1
// would otherwise turn 64 KiB into 65535 reads' worth of work.
const maxSegments = 1024

// ErrMalformedOffload wraps every refusal of a virtio header or super-frame.
var ErrMalformedOffload = errors.New("malformed offload frame")

// Super describes a frame read from an offload device, ready to be cut with Segment.
type Super struct {
	pkt   []byte // whole frame, up to the IP total length
	p     frame.Packet
	mss   int
	hdr   int // Ethernet+IP+TCP/UDP header length
	total int // number of segments
	udp   bool
}

// Segments is the number of frames the super-frame expands into (1 for an ordinary frame).
func (s *Super) Segments() int { return s.total }

// SegmentLen is the length of the largest frame Segment writes: headers plus one MSS (the
// whole frame for an ordinary one).
func (s *Super) SegmentLen() int {
	if s.hdr == 0 {
		return len(s.pkt)
	}
	return s.hdr + s.mss
}

// PrepareRead validates a frame read from an offload device, with its decoded header, and
// completes a partial checksum of a frame that needs no segmentation. The frame is modified
// in place. Anything malformed or of a GSO type we did not enable is refused with an error
// wrapping ErrMalformedOffload (the caller drops and counts it).
func PrepareRead(h *VirtioNetHdr, pkt []byte, s *Super) error {
	*s = Super{pkt: pkt, total: 1}
	switch h.GSOType &^ VirtioNetHdrGSOECN {
	case VirtioNetHdrGSONone:
		if h.Flags&VirtioNetHdrFNeedsCsum != 0 {
			start, at := int(h.CsumStart), int(h.CsumStart)+int(h.CsumOffset)
			if start >= len(pkt) || at+2 > len(pkt) {
				return fmt.Errorf("checksum start %d offset %d beyond %d-byte frame: %w",
					h.CsumStart, h.CsumOffset, len(pkt), ErrMalformedOffload)
			}
			// The field holds the pseudo-header sum (CHECKSUM_PARTIAL): summing from
			// csum_start including it gives the full checksum.
			binary.BigEndian.PutUint16(pkt[at:], ^frame.Checksum(pkt[start:], 0))
		}
		return nil
	case VirtioNetHdrGSOTCPv4, VirtioNetHdrGSOTCPv6, VirtioNetHdrGSOUDPL4:
	default:
		return fmt.Errorf("gso type %#x not enabled: %w", h.GSOType, ErrMalformedOffload)
	}
	p, err := frame.Parse(pkt)
	if err != nil {
		return fmt.Errorf("gso frame: %w: %w", err, ErrMalformedOffload)
	}
	if h.GSOSize == 0 {
		return fmt.Errorf("gso frame with gso size 0: %w", ErrMalformedOffload)
	}
	switch h.GSOType &^ VirtioNetHdrGSOECN {
	case VirtioNetHdrGSOUDPL4:
		if !p.HasUDP {
			return fmt.Errorf("uso frame is not udp: %w", ErrMalformedOffload)
		}
		s.udp = true
		s.hdr = p.L4Off + frame.UDPHeaderLen
	default:
		want := 4
		if h.GSOType&^VirtioNetHdrGSOECN == VirtioNetHdrGSOTCPv6 {
			want = 6
		}
		if !p.HasTCP || p.IP.Version != want {
			return fmt.Errorf("tso frame is not tcp over ipv%d: %w", want, ErrMalformedOffload)
		}
		s.hdr = p.L4Off + p.TCP.HeaderLen
	}
	s.p = p
	s.pkt = pkt[:p.L3Off+p.IP.TotalLen]
	s.mss = int(h.GSOSize)
	payload := len(s.pkt) - s.hdr
	s.total = (payload + s.mss - 1) / s.mss
	if s.total == 0 {
		s.total = 1 // a bare header: send it as one frame with a fresh checksum
	}
	if s.total > maxSegments {
		return fmt.Errorf("tso frame of %d bytes at gso size %d: %d segments: %w",
			payload, s.mss, s.total, ErrMalformedOffload)
	}
	return nil
}

// Segment writes segments first, first+1, ... of s into bufs[i][offset:] (setting sizes[i])
// until bufs or segments run out, and returns how many it wrote. Each segment is a complete
// frame: copied headers, IPv4 length, ID (+i) and header checksum, IPv6 payload length; for
// TCP the sequence number (+i*MSS), FIN/PSH only on the last segment and CWR only on the
// first, and a full checksum; for UDP (USO) the datagram length and a full checksum. A frame
// that needs no segmentation is copied as it is.
func Segment(s *Super, first int, bufs [][]byte, sizes []int, offset int) (int, error) {
	n := 0
	if s.hdr == 0 { // not a super-frame
		if first > 0 || len(bufs) == 0 {
			return 0, nil
		}
		if len(bufs[0])-offset < len(s.pkt) {
			return 0, fmt.Errorf("%d-byte frame does not fit a %d-byte buffer at offset %d",
				len(s.pkt), len(bufs[0]), offset)
		}
		sizes[0] = copy(bufs[0][offset:], s.pkt)
		return 1, nil
	}
	p := &s.p
	ipHL, l4HL := p.IP.HeaderLen, s.hdr-p.L4Off
	l3, l4 := p.L3Off, p.L4Off
	srcAddr, dstAddr := s.pkt[l3+12:l3+16], s.pkt[l3+16:l3+20]
	if p.IP.Version == 6 {
		srcAddr, dstAddr = s.pkt[l3+8:l3+24], s.pkt[l3+24:l3+40]
	}
	payload := s.pkt[s.hdr:]
	for i := first; i < s.total && n < len(bufs); i++ {
		start := i * s.mss
		end := min(start+s.mss, len(payload))
		segLen := end - start
		out := bufs[n][offset:]
		if len(out) < s.hdr+segLen {
			return n, fmt.Errorf("%d-byte segment does not fit a %d-byte buffer at offset %d",
				s.hdr+segLen, len(bufs[n]), offset)
		}
		copy(out, s.pkt[:s.hdr])
		copy(out[s.hdr:], payload[start:end])
		ip := out[l3:]
		if p.IP.Version == 4 {
			binary.BigEndian.PutUint16(ip[2:], uint16(ipHL+l4HL+segLen))
			binary.BigEndian.PutUint16(ip[4:], p.IP.ID+uint16(i))
			ip[10], ip[11] = 0, 0
			binary.BigEndian.PutUint16(ip[10:], ^frame.Checksum(ip[:ipHL], 0))
		} else {
			binary.BigEndian.PutUint16(ip[4:], uint16(l4HL+segLen))
		}
		sizes[n] = s.hdr + segLen
		n++
		if s.udp {
			// Each segment is a datagram of its own: length, and a checksum that is never
			// sent as 0 (which would mean "none").
			u := out[l4 : l4+frame.UDPHeaderLen+segLen]
			binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
			u[6], u[7] = 0, 0
			psum := frame.PseudoHeaderSum(frame.ProtoUDP, srcAddr, dstAddr, uint16(len(u)))
			c := ^frame.Checksum(u, psum)
			if c == 0 {
				c = 0xffff
			}
			binary.BigEndian.PutUint16(u[6:], c)
			continue
		}
		tcpHL := l4HL
		tcp := out[l4:]
		binary.BigEndian.PutUint32(tcp[4:], p.TCP.Seq+uint32(start))
		flags := p.TCP.Flags
		if i != s.total-1 {
			flags &^= frame.TCPFlagFIN | frame.TCPFlagPSH
		}
		if i != 0 {
			flags &^= frame.TCPFlagCWR
		}
		tcp[13] = flags
		tcp[16], tcp[17] = 0, 0
		psum := frame.PseudoHeaderSum(frame.ProtoTCP, srcAddr, dstAddr, uint16(tcpHL+segLen))
		binary.BigEndian.PutUint16(tcp[16:], ^frame.Checksum(tcp[:tcpHL+segLen], psum))
	}
	return n, nil
}

// ValidateGSO checks a super-frame pkt and its header h (as carried from another host)
// before the kernel is given them: a GSO type we enable, headers that parse and match it,
// a partial checksum where the kernel's own super-frames have it, and no bytes beyond the IP
// packet. Anything else is refused with an error wrapping ErrMalformedOffload.
func ValidateGSO(h *VirtioNetHdr, pkt []byte) error {
	if !h.IsGSO() {
		return fmt.Errorf("gso type %#x is not a super-frame: %w", h.GSOType, ErrMalformedOffload)
	}
	var s Super
	if err := PrepareRead(h, pkt, &s); err != nil {
		return err
	}
	want := uint16(16) // TCP checksum field
	if s.udp {
		want = 6
	}
	switch {
	case h.Flags&VirtioNetHdrFNeedsCsum == 0:
		return fmt.Errorf("super-frame without a partial checksum: %w", ErrMalformedOffload)
	case int(h.CsumStart) != s.p.L4Off || h.CsumOffset != want:
		return fmt.Errorf("checksum start %d offset %d, want %d %d: %w",
			h.CsumStart, h.CsumOffset, s.p.L4Off, want, ErrMalformedOffload)
	case len(s.pkt) != len(pkt):
		return fmt.Errorf("%d bytes after the IP packet: %w", len(pkt)-len(s.pkt), ErrMalformedOffload)
	case int(h.HdrLen) > len(pkt):
		return fmt.Errorf("header length %d beyond %d-byte frame: %w", h.HdrLen, len(pkt), ErrMalformedOffload)
	}
	return nil
}
