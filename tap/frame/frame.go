package frame

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// ErrMalformed is wrapped by every parse error: the bytes are too short or contradict themselves.
var ErrMalformed = errors.New("malformed frame")

// EtherTypes the data plane distinguishes.
const (
	EtherTypeIPv4 = 0x0800
	EtherTypeARP  = 0x0806
	EtherTypeVLAN = 0x8100 // IEEE 802.1Q
	EtherTypeQinQ = 0x88A8 // IEEE 802.1ad service tag; accepted as a single outer tag
	EtherTypeIPv6 = 0x86DD
)

// Header sizes.
const (
	EthernetHeaderLen = 14
	VLANTagLen        = 4
	IPv4HeaderMinLen  = 20
	IPv6HeaderLen     = 40
	TCPHeaderMinLen   = 20
)

// IP protocol numbers.
const (
	ProtoICMP   = 1
	ProtoTCP    = 6
	ProtoUDP    = 17
	ProtoICMPv6 = 58
)

// TCP flags.
const (
	TCPFlagFIN = 0x01
	TCPFlagSYN = 0x02
	TCPFlagRST = 0x04
	TCPFlagPSH = 0x08
	TCPFlagACK = 0x10
	TCPFlagURG = 0x20
	TCPFlagECE = 0x40
	TCPFlagCWR = 0x80
)

// MAC is an Ethernet address; an array so that it can be a map key and is never allocated.
type MAC [6]byte

// Broadcast is ff:ff:ff:ff:ff:ff.
var Broadcast = MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// IsMulticast reports whether the group bit is set (broadcast included).
func (m MAC) IsMulticast() bool { return m[0]&1 == 1 }

// String formats m as aa:bb:cc:dd:ee:ff.
func (m MAC) String() string {
	const hex = "0123456789abcdef"
	var b [17]byte
	for i, x := range m {
		if i > 0 {
			b[3*i-1] = ':'
		}
		b[3*i] = hex[x>>4]
		b[3*i+1] = hex[x&0xf]
	}
	return string(b[:])
}

// Ethernet is a parsed Ethernet header.
type Ethernet struct {
	Dst, Src MAC
	// TagType is EtherTypeVLAN or EtherTypeQinQ when the frame carries one tag, else 0.
	TagType uint16
	// TCI is the tag control information (priority, DEI, VLAN id) when TagType != 0.
	TCI uint16
	// EtherType is the type of the payload (after the tag, if any).
	EtherType uint16
	// HeaderLen is 14, or 18 with a tag: the offset of the payload.
	HeaderLen int
}

// VLAN returns the 12-bit VLAN id, 0 when untagged.
func (e *Ethernet) VLAN() uint16 { return e.TCI & 0x0fff }

// ParseEthernet parses the Ethernet header at the start of b. Only one tag is looked through;
// a second tag is reported as the EtherType (the data plane treats such frames as opaque).
func ParseEthernet(b []byte) (Ethernet, error) {
	var e Ethernet
	if len(b) < EthernetHeaderLen {
		return e, fmt.Errorf("ethernet header: %d bytes: %w", len(b), ErrMalformed)
	}
	copy(e.Dst[:], b[0:6])
	copy(e.Src[:], b[6:12])
	e.EtherType = binary.BigEndian.Uint16(b[12:14])
	e.HeaderLen = EthernetHeaderLen
	if e.EtherType == EtherTypeVLAN || e.EtherType == EtherTypeQinQ {
		if len(b) < EthernetHeaderLen+VLANTagLen {
			return e, fmt.Errorf("vlan tag: %d bytes: %w", len(b), ErrMalformed)
		}
		e.TagType = e.EtherType
		e.TCI = binary.BigEndian.Uint16(b[14:16])
		e.EtherType = binary.BigEndian.Uint16(b[16:18])
		e.HeaderLen += VLANTagLen
	}
	return e, nil
}

// IP is a parsed IPv4 or IPv6 header.
type IP struct {
	Version int // 4 or 6
	// HeaderLen is the IPv4 IHL in bytes, or 40 for IPv6 (extension headers are payload).
	HeaderLen int
	// TotalLen is the packet length the header claims (IPv4 total length, IPv6 40+payload
	// length); the bytes after it are link-layer padding.
	TotalLen int
	// Protocol is the IPv4 protocol or the IPv6 next header.
	Protocol uint8
	// TTL is the IPv4 TTL or IPv6 hop limit.
	TTL      uint8
	Src, Dst netip.Addr
	// ID, Fragment: IPv4 identification and flags+offset word; zero for IPv6.
	ID       uint16
	Fragment uint16
}

// IPv4 fragment bits in IP.Fragment.
const (
	IPv4DontFragment  = 0x4000
	IPv4MoreFragments = 0x2000
	IPv4OffsetMask    = 0x1fff
)

// IsFragment reports whether an IPv4 packet is a fragment (MF set or non-zero offset).
func (ip *IP) IsFragment() bool {
	return ip.Fragment&(IPv4MoreFragments|IPv4OffsetMask) != 0
}

// ParseIP parses the IPv4 or IPv6 header at the start of b (the Ethernet payload). It checks
// that b holds the TotalLen the header claims.
func ParseIP(b []byte) (IP, error) {
	var ip IP
	if len(b) < 1 {
		return ip, fmt.Errorf("ip header: empty: %w", ErrMalformed)
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) < IPv4HeaderMinLen {
			return ip, fmt.Errorf("ipv4 header: %d bytes: %w", len(b), ErrMalformed)
		}
		ip.Version = 4
		ip.HeaderLen = int(b[0]&0xf) * 4
		ip.TotalLen = int(binary.BigEndian.Uint16(b[2:4]))
		if ip.HeaderLen < IPv4HeaderMinLen || ip.TotalLen < ip.HeaderLen || ip.TotalLen > len(b) {
			return ip, fmt.Errorf("ipv4 header: ihl %d, total length %d, %d bytes: %w",
				ip.HeaderLen, ip.TotalLen, len(b), ErrMalformed)
		}
		ip.ID = binary.BigEndian.Uint16(b[4:6])
		ip.Fragment = binary.BigEndian.Uint16(b[6:8])
		ip.TTL = b[8]
		ip.Protocol = b[9]
		ip.Src = netip.AddrFrom4([4]byte(b[12:16]))
		ip.Dst = netip.AddrFrom4([4]byte(b[16:20]))
	case 6:
		if len(b) < IPv6HeaderLen {
			return ip, fmt.Errorf("ipv6 header: %d bytes: %w", len(b), ErrMalformed)
		}
		ip.Version = 6
		ip.HeaderLen = IPv6HeaderLen
		ip.TotalLen = IPv6HeaderLen + int(binary.BigEndian.Uint16(b[4:6]))
		if ip.TotalLen > len(b) {
			return ip, fmt.Errorf("ipv6 header: payload length %d, %d bytes: %w",
				ip.TotalLen-IPv6HeaderLen, len(b), ErrMalformed)
		}
		ip.Protocol = b[6]
		ip.TTL = b[7]
		ip.Src = netip.AddrFrom16([16]byte(b[8:24]))
		ip.Dst = netip.AddrFrom16([16]byte(b[24:40]))
	default:
		return ip, fmt.Errorf("ip version %d: %w", b[0]>>4, ErrMalformed)
	}
	return ip, nil
}

// TCP is a parsed TCP header.
type TCP struct {
	SrcPort, DstPort uint16
	Seq, Ack         uint32
	HeaderLen        int // data offset in bytes, 20..60
	Flags            uint8
	Window           uint16
}

// ParseTCP parses the TCP header at the start of b (the IP payload).
func ParseTCP(b []byte) (TCP, error) {
	var t TCP
	if len(b) < TCPHeaderMinLen {
		return t, fmt.Errorf("tcp header: %d bytes: %w", len(b), ErrMalformed)
	}
	t.HeaderLen = int(b[12]>>4) * 4
	if t.HeaderLen < TCPHeaderMinLen || t.HeaderLen > len(b) {
		return t, fmt.Errorf("tcp header: data offset %d, %d bytes: %w", t.HeaderLen, len(b), ErrMalformed)
	}
	t.SrcPort = binary.BigEndian.Uint16(b[0:2])
	t.DstPort = binary.BigEndian.Uint16(b[2:4])
	t.Seq = binary.BigEndian.Uint32(b[4:8])
	t.Ack = binary.BigEndian.Uint32(b[8:12])
	t.Flags = b[13]
	t.Window = binary.BigEndian.Uint16(b[14:16])
	return t, nil
}

// UDPHeaderLen is the size of a UDP header.
const UDPHeaderLen = 8

// UDP is a parsed UDP header.
type UDP struct {
	SrcPort, DstPort uint16
	Length           uint16 // header and payload, as the header claims
}

// ParseUDP parses the UDP header at the start of b (the IP payload).
func ParseUDP(b []byte) (UDP, error) {
	var u UDP
	if len(b) < UDPHeaderLen {
		return u, fmt.Errorf("udp header: %d bytes: %w", len(b), ErrMalformed)
	}
	u.SrcPort = binary.BigEndian.Uint16(b[0:2])
	u.DstPort = binary.BigEndian.Uint16(b[2:4])
	u.Length = binary.BigEndian.Uint16(b[4:6])
	return u, nil
}

// Packet is a frame parsed down to its transport header.
type Packet struct {
	Eth Ethernet
	// IP, TCP and UDP are valid when HasIP / HasTCP / HasUDP.
	IP     IP
	TCP    TCP
	UDP    UDP
	HasIP  bool
	HasTCP bool
	HasUDP bool
	// L3Off and L4Off are offsets in the frame of the IP and transport headers.
	L3Off, L4Off int
}

// Parse parses a whole frame as far as it understands it: Ethernet always; IP when the
// EtherType says IPv4/IPv6; TCP or UDP when the IP protocol (the IPv6 next header: extension
// headers are not walked) says so and the packet is not a fragment. A frame of another
// EtherType is not an error (ARP passes through opaque); an IP, TCP or UDP header that
// contradicts itself is.
func Parse(b []byte) (Packet, error) {
	var p Packet
	var err error
	if p.Eth, err = ParseEthernet(b); err != nil {
		return p, err
	}
	if p.Eth.EtherType != EtherTypeIPv4 && p.Eth.EtherType != EtherTypeIPv6 {
		return p, nil
	}
	p.L3Off = p.Eth.HeaderLen
	if p.IP, err = ParseIP(b[p.L3Off:]); err != nil {
		return p, err
	}
	if (p.IP.Version == 4) != (p.Eth.EtherType == EtherTypeIPv4) {
		return p, fmt.Errorf("ethertype %#04x carries ip version %d: %w", p.Eth.EtherType, p.IP.Version, ErrMalformed)
	}
	p.HasIP = true
	if p.IP.IsFragment() {
		return p, nil
	}
	l4 := b[p.L3Off+p.IP.HeaderLen : p.L3Off+p.IP.TotalLen]
	switch p.IP.Protocol {
	case ProtoTCP:
		if p.TCP, err = ParseTCP(l4); err != nil {
			return p, err
		}
		p.HasTCP = true
	case ProtoUDP:
		if p.UDP, err = ParseUDP(l4); err != nil {
			return p, err
		}
		p.HasUDP = true
	default:
		return p, nil
	}
	p.L4Off = p.L3Off + p.IP.HeaderLen
	return p, nil
}
