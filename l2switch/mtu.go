package l2switch

import (
	"encoding/binary"

	"github.com/weavemesh/weave/overlay"
	"github.com/weavemesh/weave/tap/frame"
)

const (
	icmpDestUnreachable = 3
	icmpFragNeeded      = 4
	// minFragData keeps fragmentation sane when a path claims an absurdly small MTU.
	minFragData = 8
)

// oversize handles a frame bigger than the path to g.hop can carry in one piece (Weave's
// rules): an IPv4 packet with DF gets an ICMP "fragmentation needed" back to its sender, as if
// from its destination, so the sender's stack lowers its path MTU; an IPv4 packet without
// DF is fragmented here; anything else is dropped.
func (w *worker) oversize(g *group, fr overlay.Frame) {
	r := w.r
	if g.max <= 0 {
		r.stats.noRoute.Add(1)
		return
	}
	f := fr.Data
	if len(f) < frame.EthernetHeaderLen+frame.IPv4HeaderMinLen ||
		binary.BigEndian.Uint16(f[12:14]) != frame.EtherTypeIPv4 {
		r.stats.oversize.Add(1)
		return
	}
	ip, err := frame.ParseIP(f[frame.EthernetHeaderLen:])
	if err != nil || ip.Version != 4 {
		r.stats.oversize.Add(1)
		return
	}
	if ip.Fragment&frame.IPv4DontFragment != 0 {
		if frame.MAC(f[0:6]).IsMulticast() || ip.Fragment&frame.IPv4OffsetMask != 0 {
			r.stats.oversize.Add(1)
			return
		}
		w.fragNeeded(fr, ip.HeaderLen, g.max-frame.EthernetHeaderLen)
		return
	}
	w.fragment(g, fr, ip)
}

// fragNeeded answers the IPv4 packet in fr with ICMP type 3 code 4 carrying mtu.
func (w *worker) fragNeeded(fr overlay.Frame, ihl, mtu int) {
	r := w.r
	orig := fr.Data[frame.EthernetHeaderLen:]
	quote := min(len(orig), ihl+8)
	ipLen := 20 + 8 + quote
	b := w.alloc(frame.EthernetHeaderLen + ipLen)
	copy(b[0:6], fr.Data[6:12]) // back to the sender's MAC
	copy(b[6:12], fr.Data[0:6]) // from the destination's
	binary.BigEndian.PutUint16(b[12:14], frame.EtherTypeIPv4)
	ip := b[frame.EthernetHeaderLen:]
	ip[0], ip[1] = 0x45, 0
	binary.BigEndian.PutUint16(ip[2:4], uint16(ipLen))
	binary.BigEndian.PutUint32(ip[4:8], 0)
	ip[8], ip[9] = 64, frame.ProtoICMP
	ip[10], ip[11] = 0, 0
	copy(ip[12:16], orig[16:20]) // from the original destination
	copy(ip[16:20], orig[12:16]) // to the original source
	binary.BigEndian.PutUint16(ip[10:12], ^frame.Checksum(ip[:20], 0))
	icmp := ip[20:]
	icmp[0], icmp[1] = icmpDestUnreachable, icmpFragNeeded
	icmp[2], icmp[3], icmp[4], icmp[5] = 0, 0, 0, 0
	binary.BigEndian.PutUint16(icmp[6:8], uint16(min(mtu, 0xffff)))
	copy(icmp[8:], orig[:quote])
	binary.BigEndian.PutUint16(icmp[2:4], ^frame.Checksum(icmp, 0))
	r.stats.icmp.Add(1)
	if fr.Src == r.name {
		w.inject(b)
		return
	}
	// The sender is behind another peer: send the reply there, tagged as coming from the
	// destination peer (which owns the MAC the reply comes from).
	if hop, ok := r.unicastHop(w.table, fr.Src); ok {
		w.add(hop, overlay.Frame{Src: fr.Dst, Dst: fr.Src, Data: b})
	} else {
		r.stats.noRoute.Add(1)
	}
}

// fragment splits the IPv4 packet in fr into fragments that fit g.max and queues them.
func (w *worker) fragment(g *group, fr overlay.Frame, ip frame.IP) {
	r := w.r
	const eth = frame.EthernetHeaderLen
	hdr := fr.Data[eth : eth+ip.HeaderLen]
	payload := fr.Data[eth+ip.HeaderLen : eth+ip.TotalLen]
	step := (g.max - eth - ip.HeaderLen) &^ 7
	if step < minFragData {
		r.stats.oversize.Add(1)
		return
	}
	baseOff := int(ip.Fragment&frame.IPv4OffsetMask) * 8
	lastMF := ip.Fragment&frame.IPv4MoreFragments != 0
	for off := 0; off < len(payload); off += step {
		chunk := payload[off:min(off+step, len(payload))]
		b := w.alloc(eth + len(hdr) + len(chunk))
		copy(b[:eth], fr.Data[:eth])
		h := b[eth : eth+len(hdr)]
		copy(h, hdr)
		copy(b[eth+len(hdr):], chunk)
		binary.BigEndian.PutUint16(h[2:4], uint16(len(hdr)+len(chunk)))
		word := uint16((baseOff + off) / 8)
		if off+len(chunk) < len(payload) || lastMF {
			word |= frame.IPv4MoreFragments
		}
		binary.BigEndian.PutUint16(h[6:8], word)
		h[10], h[11] = 0, 0
		binary.BigEndian.PutUint16(h[10:12], ^frame.Checksum(h, 0))
		g.frames = append(g.frames, overlay.Frame{Src: fr.Src, Dst: fr.Dst, Data: b})
	}
	r.stats.frag.Add(1)
}
