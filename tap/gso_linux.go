package tap

import (
	"fmt"

	"github.com/weavemesh/weave/tap/frame"
	"golang.org/x/sys/unix"
)

var (
	_ GSOReader = (*device)(nil)
	_ GSOWriter = (*device)(nil)
)

// ReadGSO implements GSOReader. The kernel writes each frame with its virtio-net header
// straight into the caller's buffer (the header into the headroom), so a super-frame is
// neither copied nor cut here.
func (d *device) ReadGSO(bufs [][]byte, sizes []int, gso []frame.VirtioNetHdr, offset int) (int, error) {
	if !d.vnet || d.pending {
		// No offloads (nothing is ever a super-frame), or segments of an earlier Read left.
		n, err := d.Read(bufs, sizes, offset)
		clear(gso[:n])
		return n, err
	}
	if d.closed.Load() {
		return 0, d.closedErr(nil)
	}
	if offset < VirtioNetHdrLen {
		return 0, fmt.Errorf("tap %s: offset %d leaves no room for the virtio-net header", d.name, offset)
	}
	n := 0
	for n < len(bufs) && n < len(gso) {
		if len(bufs[n]) < offset+MaxFrameSize {
			return n, fmt.Errorf("tap %s: %d-byte buffer cannot hold a super-frame at offset %d", d.name, len(bufs[n]), offset)
		}
		d.rblock = n == 0
		d.rtarget = bufs[n][offset-VirtioNetHdrLen:]
		err := d.rc.Read(d.readFn)
		d.rtarget = nil
		if err != nil {
			if n > 0 {
				break
			}
			return 0, d.closedErr(err)
		}
		if d.rerr == unix.EAGAIN || d.rerr == unix.EINTR {
			break
		}
		if d.rerr != nil {
			if n > 0 {
				break
			}
			return 0, d.closedErr(d.rerr)
		}
		pkt := bufs[n][offset-VirtioNetHdrLen : offset-VirtioNetHdrLen+d.rn]
		h := &gso[n]
		if err := h.Decode(pkt); err != nil {
			d.dropRead(err, 1)
			continue
		}
		err = PrepareRead(h, pkt[VirtioNetHdrLen:], &d.sup)
		size, hdr := len(d.sup.pkt), d.sup.hdr
		d.sup = Super{} // do not keep the caller's buffer alive
		if err != nil {
			d.dropRead(err, 1)
			continue
		}
		if h.IsGSO() {
			d.stats.rxSuper.Add(1)
			// The kernel's hdr_len is its linear part, which may hold payload too: the
			// exact header length lets the router size the segments (HdrLen+GSOSize).
			h.HdrLen = uint16(hdr)
		} else {
			*h = VirtioNetHdr{} // checksum completed by PrepareRead
		}
		sizes[n] = size
		n++
	}
	d.stats.rxFrames.Add(uint64(n))
	return n, nil
}

// WriteGSO implements GSOWriter.
func (d *device) WriteGSO(bufs [][]byte, gso []frame.VirtioNetHdr, offset int) (int, error) {
	written, start := 0, 0
	var firstErr error
	flush := func(end int) error {
		if start >= end {
			return nil
		}
		k, err := d.Write(bufs[start:end], offset)
		written += k
		if err != nil && firstErr == nil {
			firstErr = err
		}
		if d.closed.Load() {
			return d.closedErr(nil)
		}
		return nil
	}
	for i := range bufs {
		if i >= len(gso) || !gso[i].IsGSO() {
			continue
		}
		if err := flush(i); err != nil {
			return written, err
		}
		start = i + 1
		k, err := d.writeSuper(bufs[i], &gso[i], offset)
		written += k
		if err != nil {
			if d.closed.Load() {
				return written, d.closedErr(nil)
			}
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	if err := flush(len(bufs)); err != nil {
		return written, err
	}
	return written, firstErr
}

// writeSuper writes one super-frame buf[offset:] described by h: whole, with its header,
// when the kernel takes offloads, else cut into frames here. It returns how many frames
// (1 or the segments) were written.
func (d *device) writeSuper(buf []byte, h *frame.VirtioNetHdr, offset int) (int, error) {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	if d.closed.Load() {
		return 0, d.closedErr(nil)
	}
	pkt := buf[offset:]
	if err := ValidateGSO(h, pkt); err != nil {
		d.stats.txDropped.Add(1)
		return 0, fmt.Errorf("tap %s: %w", d.name, err)
	}
	var firstErr error
	if d.vnet {
		d.stats.txFrames.Add(1)
		h.Encode(buf[offset-VirtioNetHdrLen : offset])
		d.wbuf = buf[offset-VirtioNetHdrLen:]
		if err := d.write(&firstErr); err != nil {
			return 0, err
		}
		if firstErr != nil {
			return 0, firstErr
		}
		return 1, nil
	}
	var s Super
	hc := *h
	if err := PrepareRead(&hc, pkt, &s); err != nil {
		d.stats.txDropped.Add(1)
		return 0, fmt.Errorf("tap %s: %w", d.name, err)
	}
	if d.segBufs == nil {
		d.segBufs = make([][]byte, 64)
		d.segSizes = make([]int, len(d.segBufs))
	}
	for i := range d.segBufs {
		if len(d.segBufs[i]) < s.SegmentLen() {
			d.segBufs[i] = make([]byte, s.SegmentLen())
		}
	}
	written := 0
	for next := 0; next < s.Segments(); {
		k, err := Segment(&s, next, d.segBufs, d.segSizes, 0)
		if err != nil {
			d.stats.txDropped.Add(uint64(s.Segments() - next))
			return written, fmt.Errorf("tap %s: %w", d.name, err)
		}
		next += k
		d.stats.txFrames.Add(uint64(k))
		for i := range k {
			d.wbuf = d.segBufs[i][:d.segSizes[i]]
			if err := d.write(&firstErr); err != nil {
				return written, err
			}
			if d.werr == nil {
				written++
			}
		}
	}
	return written, firstErr
}
