package netlab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"
)

// Raw datagrams for adversarial tests: hand-made Ethernet frames (ARP, ICMP echo), a VXLAN
// encapsulation of them, and a sender that puts any payload on the wire from inside a lab
// namespace, as an attacker on the underlay would. Nothing here checks what it builds:
// malformed input is the point.

// Broadcast is the Ethernet broadcast address.
var Broadcast = [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// EtherTypes of the frames built here.
const (
	EtherTypeIPv4 = 0x0800
	EtherTypeARP  = 0x0806
	// EtherTypeAll is ETH_P_ALL: a PacketSocket bound to it sees every frame.
	EtherTypeAll = 0x0003
)

// VXLANHeaderLen is the VXLAN header (RFC 7348) in front of the inner frame.
const VXLANHeaderLen = 8

// VXLAN returns the UDP payload of a VXLAN datagram: the header with the I flag and vni,
// then inner (an Ethernet frame without FCS).
func VXLAN(vni uint32, inner []byte) []byte {
	b := make([]byte, VXLANHeaderLen, VXLANHeaderLen+len(inner))
	b[0] = 0x08 // I: the VNI is valid
	binary.BigEndian.PutUint32(b[4:], vni<<8)
	return append(b, inner...)
}

// Ethernet returns an Ethernet frame.
func Ethernet(dst, src [6]byte, etherType uint16, payload []byte) []byte {
	b := make([]byte, 14, 14+len(payload))
	copy(b, dst[:])
	copy(b[6:], src[:])
	binary.BigEndian.PutUint16(b[12:], etherType)
	return append(b, payload...)
}

// GratuitousARP returns a broadcast ARP request in which src claims ip: receivers that
// already have ip in their cache update it to src (cache poisoning, if src lies).
func GratuitousARP(src [6]byte, ip netip.Addr) []byte {
	a := make([]byte, 28)
	binary.BigEndian.PutUint16(a[0:], 1)      // hardware: Ethernet
	binary.BigEndian.PutUint16(a[2:], 0x0800) // protocol: IPv4
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], 1) // request
	copy(a[8:], src[:])
	ip4 := ip.As4()
	copy(a[14:], ip4[:])
	copy(a[24:], ip4[:]) // target = sender: gratuitous
	return Ethernet(Broadcast, src, EtherTypeARP, a)
}

// ICMPEcho returns an Ethernet frame with an IPv4 ICMP echo request from srcIP to dstIP
// (checksums correct, so a receiver answers it) carrying data.
func ICMPEcho(dst, src [6]byte, srcIP, dstIP netip.Addr, id, seq uint16, data []byte) []byte {
	icmp := make([]byte, 8, 8+len(data))
	icmp[0] = 8 // echo request
	binary.BigEndian.PutUint16(icmp[4:], id)
	binary.BigEndian.PutUint16(icmp[6:], seq)
	icmp = append(icmp, data...)
	binary.BigEndian.PutUint16(icmp[2:], checksum(icmp))
	ip := make([]byte, 20, 20+len(icmp))
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(icmp)))
	ip[8] = 64 // TTL
	ip[9] = 1  // ICMP
	s, d := srcIP.As4(), dstIP.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], checksum(ip))
	return Ethernet(dst, src, EtherTypeIPv4, append(ip, icmp...))
}

// checksum is the Internet checksum (RFC 1071).
func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// PacketListener is a lab namespace that can open sockets: *Host, *Container.
type PacketListener interface {
	ListenPacket(network, address string) (net.PacketConn, error)
}

// SendUDP sends each payload as one UDP datagram from an ephemeral port inside n's
// namespace (so from n's own address) to dst.
func SendUDP(n PacketListener, dst netip.AddrPort, payloads ...[]byte) error {
	network := "udp4"
	if dst.Addr().Is6() && !dst.Addr().Is4In6() {
		network = "udp6"
	}
	c, err := n.ListenPacket(network, ":0")
	if err != nil {
		return fmt.Errorf("netlab: send udp: %w", err)
	}
	defer c.Close()
	to := net.UDPAddrFromAddrPort(dst)
	for _, p := range payloads {
		if _, err := c.WriteTo(p, to); err != nil {
			return fmt.Errorf("netlab: send udp to %s: %w", dst, err)
		}
	}
	return nil
}

// FramesFrom reads frames from a PacketSocket until one with source MAC stop arrives or
// timeout passes, and returns how many frames with each source MAC in srcs came before.
// found says whether stop came: a frame sent after the others, by a path that would have
// carried them too, proves they had their chance to arrive.
func FramesFrom(s *os.File, stop [6]byte, timeout time.Duration, srcs ...[6]byte) (counts map[[6]byte]int, found bool, err error) {
	counts = map[[6]byte]int{}
	buf := make([]byte, 65536)
	deadline := time.Now().Add(timeout)
	for {
		s.SetReadDeadline(deadline)
		n, err := s.Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return counts, false, nil
		}
		if err != nil {
			return counts, false, fmt.Errorf("netlab: read frames: %w", err)
		}
		if n < 14 {
			continue
		}
		src := [6]byte(buf[6:12])
		if src == stop {
			return counts, true, nil
		}
		for _, m := range srcs {
			if src == m {
				counts[m]++
			}
		}
	}
}
