package tap

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/weavemesh/weave/tap/frame"
)

// KernelWrite is one write the Coalescer asks for: the bytes
// bufs[Index][offset-VirtioNetHdrLen : offset+Len], a virtio-net header followed by a frame.
type KernelWrite struct {
	Index int // buffer index
	Len   int // frame length after coalescing (without the virtio-net header)
	Segs  int // number of frames it carries
}

// flowKey identifies a TCP flow at layer 2: coalescing must never merge frames that differ in
// anything a bridge or a receiver looks at.
type flowKey struct {
	dst, src         frame.MAC
	tagType, tci     uint16
	srcIP, dstIP     netip.Addr
	srcPort, dstPort uint16
}

type coalesceEntry struct {
	KernelWrite
	p        frame.Packet
	nextSeq  uint32
	gsoSize  int
	capLimit int // largest frame the head's buffer can grow to
	closed   bool
}

// Coalescer merges consecutive, in-order TCP segments of a flow into GSO super-frames (GRO in
// userspace). It keeps its scratch state between calls so that it allocates nothing once warm;
// it is not safe for concurrent use.
type Coalescer struct {
	entries []coalesceEntry
	flows   map[flowKey]int // flow -> index in entries of its open head
	writes  []KernelWrite
}

// NewCoalescer returns a Coalescer sized for batches of batchSize frames.
func NewCoalescer(batchSize int) *Coalescer {
	return &Coalescer{
		entries: make([]coalesceEntry, 0, batchSize),
		flows:   make(map[flowKey]int, batchSize),
		writes:  make([]KernelWrite, 0, batchSize),
	}
}

// Coalesce plans the kernel writes for the frames bufs[i][offset:] (offset must be at least
// VirtioNetHdrLen). Frames that join an earlier frame's run have their TCP payload copied
// after it, into the capacity of that frame's buffer; every write gets its virtio-net header
// in the headroom. Frames that are not plain TCP (ARP, UDP, IPv4 options, IPv6 extension
// headers, SYN/FIN/RST/URG/CWR/ECE, empty payload) are written unchanged with a zero header.
// Relative order within a flow is kept; different flows may be reordered, as with kernel GRO.
// The returned slice is reused by the next call.
func (c *Coalescer) Coalesce(bufs [][]byte, offset int) ([]KernelWrite, error) {
	if offset < VirtioNetHdrLen {
		return nil, fmt.Errorf("offset %d leaves no room for the %d-byte virtio-net header", offset, VirtioNetHdrLen)
	}
	c.entries = c.entries[:0]
	c.writes = c.writes[:0]
	clear(c.flows)
	for i, b := range bufs {
		pkt := b[offset:]
		p, ok := coalescible(pkt)
		var key flowKey
		if p.HasTCP {
			key = flowKey{
				dst: p.Eth.Dst, src: p.Eth.Src, tagType: p.Eth.TagType, tci: p.Eth.TCI,
				srcIP: p.IP.Src, dstIP: p.IP.Dst, srcPort: p.TCP.SrcPort, dstPort: p.TCP.DstPort,
			}
		}
		if !ok {
			if h, open := c.flows[key]; open && p.HasTCP {
				// A pure ACK or a FIN of the flow: later data must not jump ahead of it.
				c.entries[h].closed = true
			}
			c.entries = append(c.entries, coalesceEntry{KernelWrite: KernelWrite{Index: i, Len: len(pkt), Segs: 1}, closed: true})
			continue
		}
		payload := len(pkt) - p.L4Off - p.TCP.HeaderLen
		if h, ok := c.flows[key]; ok {
			head := &c.entries[h]
			if canMerge(head, bufs[head.Index][offset:], &p, pkt, payload) {
				hb := bufs[head.Index][offset : offset+head.capLimit]
				copy(hb[head.Len:], pkt[len(pkt)-payload:])
				head.Len += payload
				head.Segs++
				head.nextSeq += uint32(payload)
				if p.TCP.Flags&frame.TCPFlagPSH != 0 {
					hb[head.p.L4Off+13] |= frame.TCPFlagPSH
					head.closed = true
				}
				if payload < head.gsoSize {
					head.closed = true // only the last segment may be short
				}
				continue
			}
		}
		capLimit := min(cap(b)-offset, p.L3Off+65535)
		c.flows[key] = len(c.entries)
		c.entries = append(c.entries, coalesceEntry{
			KernelWrite: KernelWrite{Index: i, Len: len(pkt), Segs: 1},
			p:           p,
			nextSeq:     p.TCP.Seq + uint32(payload),
			gsoSize:     payload,
			capLimit:    capLimit,
			closed:      p.TCP.Flags&frame.TCPFlagPSH != 0,
		})
	}
	for i := range c.entries {
		e := &c.entries[i]
		b := bufs[e.Index]
		var h VirtioNetHdr
		if e.Segs > 1 {
			finishSuper(e, b[offset:offset+e.Len], &h)
		}
		h.Encode(b[offset-VirtioNetHdrLen : offset])
		c.writes = append(c.writes, e.KernelWrite)
	}
	return c.writes, nil
}

// coalescible parses pkt and reports whether it may take part in coalescing.
func coalescible(pkt []byte) (frame.Packet, bool) {
	p, err := frame.Parse(pkt)
	if err != nil || !p.HasTCP || len(pkt) != p.L3Off+p.IP.TotalLen {
		return p, false
	}
	if p.IP.Version == 4 && (p.IP.HeaderLen != frame.IPv4HeaderMinLen || p.IP.IsFragment()) {
		return p, false
	}
	if p.TCP.Flags&^(frame.TCPFlagACK|frame.TCPFlagPSH) != 0 || p.TCP.Flags&frame.TCPFlagACK == 0 {
		return p, false
	}
	if len(pkt)-p.L4Off-p.TCP.HeaderLen == 0 {
		return p, false
	}
	return p, true
}

// canMerge reports whether segment pkt (parsed as p, with payload bytes) continues head.
func canMerge(head *coalesceEntry, hpkt []byte, p *frame.Packet, pkt []byte, payload int) bool {
	hp := &head.p
	switch {
	case head.closed,
		p.TCP.Seq != head.nextSeq,
		p.TCP.Ack != hp.TCP.Ack,
		p.TCP.HeaderLen != hp.TCP.HeaderLen,
		p.IP.Version != hp.IP.Version,
		payload > head.gsoSize,
		head.Len+payload > head.capLimit:
		return false
	}
	// Options (timestamps) must match byte for byte, as in kernel GRO.
	if !bytes.Equal(pkt[p.L4Off+20:p.L4Off+p.TCP.HeaderLen], hpkt[hp.L4Off+20:hp.L4Off+hp.TCP.HeaderLen]) {
		return false
	}
	ip, hip := pkt[p.L3Off:], hpkt[hp.L3Off:]
	if p.IP.Version == 4 {
		// TOS, TTL and DF must agree; the ID is rewritten on segmentation anyway.
		return ip[1] == hip[1] && ip[8] == hip[8] && (ip[6]^hip[6])&0x40 == 0
	}
	// Traffic class, flow label and hop limit must agree.
	return binary.BigEndian.Uint32(ip[0:4]) == binary.BigEndian.Uint32(hip[0:4]) && ip[7] == hip[7]
}

// finishSuper rewrites the head of a coalesced run into a GSO super-frame: IP length (and
// IPv4 header checksum), the TCP checksum field set to the pseudo-header sum the kernel
// completes (CHECKSUM_PARTIAL), and the virtio-net header describing it.
func finishSuper(e *coalesceEntry, pkt []byte, h *VirtioNetHdr) {
	p := &e.p
	ip := pkt[p.L3Off:]
	tcpLen := len(pkt) - p.L4Off
	var src, dst []byte
	if p.IP.Version == 4 {
		binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
		ip[10], ip[11] = 0, 0
		binary.BigEndian.PutUint16(ip[10:], ^frame.Checksum(ip[:p.IP.HeaderLen], 0))
		src, dst = ip[12:16], ip[16:20]
		h.GSOType = VirtioNetHdrGSOTCPv4
	} else {
		binary.BigEndian.PutUint16(ip[4:], uint16(tcpLen))
		src, dst = ip[8:24], ip[24:40]
		h.GSOType = VirtioNetHdrGSOTCPv6
	}
	psum := frame.PseudoHeaderSum(frame.ProtoTCP, src, dst, uint16(tcpLen))
	binary.BigEndian.PutUint16(pkt[p.L4Off+16:], frame.Fold(psum))
	h.Flags = VirtioNetHdrFNeedsCsum
	h.HdrLen = uint16(p.L4Off + p.TCP.HeaderLen)
	h.GSOSize = uint16(e.gsoSize)
	h.CsumStart = uint16(p.L4Off)
	h.CsumOffset = 16
}
