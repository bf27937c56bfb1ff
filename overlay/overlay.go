package overlay

import (
	"sync/atomic"

	"github.com/weavemesh/weave/mesh"
	"github.com/weavemesh/weave/tap/frame"
)

// Frame is one Ethernet frame in flight between peers, tagged as Weave's sleeve tags it:
// Src is the peer that captured it from its bridge; Dst is the peer it is for (for a
// broadcast, the next peer on Src's spanning tree). Intermediate peers relay it unchanged
// towards Dst without looking at the Ethernet header.
type Frame struct {
	Src, Dst mesh.PeerName
	// Data is the Ethernet frame. It belongs to the caller and is only valid during the
	// call it is passed to.
	Data []byte
	// Buf, if set, is the buffer Data lies in: Data == Buf[Off:Off+len(Data)], and the
	// receiver may overwrite Buf[:Off] and Buf[Off+len(Data):cap(Buf)] during the call (they
	// hold nothing the caller still needs). The router then writes the frame to the TAP in
	// place, with the TAP's header in front and room to coalesce behind, instead of copying.
	Buf []byte
	Off int
	// Delivered: the kernel path (fastdp) already carried this frame from Src to Dst's
	// bridge, so Dst must not deliver it again, only pass it on along Src's broadcast tree
	// to the peers the kernel copy cannot reach (a fastdp neighbour never sees the kernel
	// copy in its router). Only a frame captured by Src and sent to its neighbour Dst
	// carries it.
	Delivered bool
	// GSO, when GSO.IsGSO(), says Data is a TCP or UDP super-frame as a TAP with offloads
	// hands it over (GSO passthrough): one packet larger than the MTU, with a partial
	// checksum, that the receiving TAP takes whole. Only a GSOForwarder whose MaxGSO allows
	// it is given such a frame; otherwise the router cuts it into segments first. When Buf
	// is set, a Forwarder may also overwrite a super-frame's Data (it writes the headers of
	// each piece in front of the piece's bytes and seals from there).
	GSO frame.VirtioNetHdr
}

// Forwarder is the sending side of an overlay.
type Forwarder interface {
	// Forward sends frames to the neighbour hop, in order. It copies what it needs before it
	// returns, so the caller may reuse the frames' buffers at once. Frames that cannot be
	// sent (no working path to hop, overlay closed) are dropped and counted. It may block
	// while the hop's queue is full, which pushes back on the reader feeding it. Several
	// goroutines may call it at once.
	Forward(hop mesh.PeerName, frames []Frame)
	// MaxFrame is the largest Ethernet frame Forward can carry to hop in one piece (the
	// path MTU minus the encapsulation), or 0 if hop is not reachable through this overlay.
	MaxFrame(hop mesh.PeerName) int
}

// GSOForwarder is implemented by a Forwarder that can carry super-frames (Frame.GSO) whole.
type GSOForwarder interface {
	// MaxGSO is the largest super-frame Forward carries to hop whole, or 0 when hop does
	// not take super-frames (then the router cuts them into MaxFrame-sized segments).
	MaxGSO(hop mesh.PeerName) int
}

// KernelCarrier is implemented by a Forwarder when a kernel path may carry the traffic
// captured from our own bridge to some neighbours: the bridge hands such frames to the
// kernel's port and to the router alike, and the router must then not send them again.
type KernelCarrier interface {
	// KernelCarries reports whether the kernel carries frames from our bridge to hop.
	KernelCarries(hop mesh.PeerName) bool
}

// Receiver is what an overlay hands received frames to: the router.
type Receiver interface {
	// Receive handles frames that arrived from the neighbour from. The frames are only
	// valid during the call. It is called from the overlay's reader goroutines, one batch at
	// a time per goroutine, and may call Forward of the same overlay (to relay).
	Receive(from mesh.PeerName, frames []Frame)
}

// Stats counts what an overlay carried. Counters only grow.
type Stats struct {
	FramesIn, BytesIn, DropsIn    uint64
	FramesOut, BytesOut, DropsOut uint64
}

// Counters is the concurrent-safe form of Stats that overlays embed. Callers add per batch,
// not per frame, to keep atomic traffic off the per-frame path.
type Counters struct {
	framesIn, bytesIn, dropsIn    atomic.Uint64
	framesOut, bytesOut, dropsOut atomic.Uint64
}

// AddIn counts received frames and bytes, and frames dropped on receive.
func (c *Counters) AddIn(frames, bytes, drops uint64) {
	add(&c.framesIn, &c.bytesIn, &c.dropsIn, frames, bytes, drops)
}

// AddOut counts sent frames and bytes, and frames dropped on send.
func (c *Counters) AddOut(frames, bytes, drops uint64) {
	add(&c.framesOut, &c.bytesOut, &c.dropsOut, frames, bytes, drops)
}

// add skips the atomic adds of zero: the hot path calls it once per batch, often with no
// drops (and a shared cache line written for nothing costs the other cores).
func add(f, b, d *atomic.Uint64, frames, bytes, drops uint64) {
	if frames != 0 {
		f.Add(frames)
		b.Add(bytes)
	}
	if drops != 0 {
		d.Add(drops)
	}
}

// Snapshot returns the current values.
func (c *Counters) Snapshot() Stats {
	return Stats{
		FramesIn: c.framesIn.Load(), BytesIn: c.bytesIn.Load(), DropsIn: c.dropsIn.Load(),
		FramesOut: c.framesOut.Load(), BytesOut: c.bytesOut.Load(), DropsOut: c.dropsOut.Load(),
	}
}

// Null is a Forwarder that reaches nobody: it drops and counts everything. The router uses
// it until an overlay is attached.
type Null struct {
	Counters
}

var _ Forwarder = (*Null)(nil)

// Forward drops the frames.
func (n *Null) Forward(_ mesh.PeerName, frames []Frame) { n.AddOut(0, 0, uint64(len(frames))) }

// MaxFrame is 0: no peer is reachable.
func (n *Null) MaxFrame(mesh.PeerName) int { return 0 }
