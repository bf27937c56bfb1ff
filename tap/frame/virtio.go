package frame

import (
	"encoding/binary"
	"fmt"
)

// VirtioNetHdrLen is the size of struct virtio_net_hdr (without num_buffers).
const VirtioNetHdrLen = 10

// virtio_net_hdr flags and GSO types (linux/virtio_net.h).
const (
	VirtioNetHdrFNeedsCsum = 1
	VirtioNetHdrFDataValid = 2

	VirtioNetHdrGSONone  = 0
	VirtioNetHdrGSOTCPv4 = 1
	VirtioNetHdrGSOUDP   = 3
	VirtioNetHdrGSOTCPv6 = 4
	VirtioNetHdrGSOUDPL4 = 5
	VirtioNetHdrGSOECN   = 0x80
)

// VirtioNetHdr is struct virtio_net_hdr: how a TAP opened with IFF_VNET_HDR describes a frame's
// offloads. The data plane also carries it with a super-frame from one TAP to another (GSO
// passthrough), so it lives here, beside the parsers, rather than in package tap. Multi-byte
// fields are in host byte order (the device is not switched to little-endian with
// TUNSETVNETLE, so legacy native order holds); on the sleeve's wire they are big-endian.
type VirtioNetHdr struct {
	Flags      uint8
	GSOType    uint8
	HdrLen     uint16
	GSOSize    uint16
	CsumStart  uint16
	CsumOffset uint16
}

// IsGSO reports whether the header describes a super-frame (to be cut into GSOSize pieces).
func (h *VirtioNetHdr) IsGSO() bool { return h.GSOType&^VirtioNetHdrGSOECN != VirtioNetHdrGSONone }

// Decode reads the header from b (host byte order).
func (h *VirtioNetHdr) Decode(b []byte) error { return h.decode(b, binary.NativeEndian) }

// Encode writes the header to b (host byte order), which must hold VirtioNetHdrLen bytes.
func (h *VirtioNetHdr) Encode(b []byte) { h.encode(b, binary.NativeEndian) }

// DecodeWire and EncodeWire are Decode and Encode in network byte order, for carrying the
// header between hosts.
func (h *VirtioNetHdr) DecodeWire(b []byte) error { return h.decode(b, binary.BigEndian) }

// EncodeWire writes the header to b in network byte order.
func (h *VirtioNetHdr) EncodeWire(b []byte) { h.encode(b, binary.BigEndian) }

func (h *VirtioNetHdr) decode(b []byte, o binary.ByteOrder) error {
	if len(b) < VirtioNetHdrLen {
		return fmt.Errorf("virtio net header: %d bytes: %w", len(b), ErrMalformed)
	}
	h.Flags = b[0]
	h.GSOType = b[1]
	h.HdrLen = o.Uint16(b[2:4])
	h.GSOSize = o.Uint16(b[4:6])
	h.CsumStart = o.Uint16(b[6:8])
	h.CsumOffset = o.Uint16(b[8:10])
	return nil
}

func (h *VirtioNetHdr) encode(b []byte, o binary.ByteOrder) {
	_ = b[VirtioNetHdrLen-1]
	b[0] = h.Flags
	b[1] = h.GSOType
	o.PutUint16(b[2:4], h.HdrLen)
	o.PutUint16(b[4:6], h.GSOSize)
	o.PutUint16(b[6:8], h.CsumStart)
	o.PutUint16(b[8:10], h.CsumOffset)
}
