package l2switch

import (
	"net"
	"time"

	"github.com/weavemesh/weave/internal/logx"
	"github.com/weavemesh/weave/mesh"
	"github.com/weavemesh/weave/overlay"
	"github.com/weavemesh/weave/tap"
	"github.com/weavemesh/weave/tap/frame"
)

const (
	// maxIdleWorkers bounds the workers kept for overlay readers between batches.
	maxIdleWorkers = 8
	// tapWriteBatch is how many frames are written to the TAP per call at most.
	tapWriteBatch = tap.IdealBatchSize
	// tapBufSize lets the TAP coalesce a full 64 KiB super-frame behind any buffer, and
	// holds a whole super-frame.
	tapBufSize = tap.Headroom + tap.MaxFrameSize
	// maxSegBufs bounds the segment buffers of one worker: when they run out mid-batch,
	// what is queued is sent and they are reused.
	maxSegBufs = 256
	// tapOffset is the headroom passed to tap.Write: just the virtio-net header, so that
	// frames lent by an overlay (with only their encapsulation in front) qualify.
	tapOffset = tap.VirtioNetHdrLen
)

// stpMAC is the 802.1D bridge group address; spanning-tree frames stay on their bridge.
var stpMAC = frame.MAC{0x01, 0x80, 0xc2, 0, 0, 0}

// worker holds the scratch state of one goroutine on the forwarding path, so that a warm
// worker forwards without allocating.
type worker struct {
	r         *Switch
	now       int64
	table     *routeTable
	readBufs  [][]byte
	readSizes []int
	readGSO   []frame.VirtioNetHdr // with GSO passthrough: offloads of each frame read
	groups    []group              // frames per next hop, in first-seen order
	learns    []learnOp            // MACs to (re)learn after the read lock is released
	tapBufs   [][]byte             // owned buffers for frames injected into the bridge
	tapOut    [][]byte             // frames for tap.Write, each with tapOffset bytes of headroom
	tapGSO    []frame.VirtioNetHdr // offloads of tapOut[i], when any is a super-frame
	anyGSO    bool                 // some tapOut frame is a super-frame
	segBufs   [][]byte             // segments of super-frames cut in this batch
	segSizes  []int
	nSeg      int    // segBufs in use
	nOwn      int    // tapBufs in use by tapOut
	arena     []byte // ICMP replies and fragments of the current batch
}

type group struct {
	hop    mesh.PeerName
	max    int  // largest frame the hop takes; 0: unreachable
	maxGSO int  // largest super-frame the hop takes whole; 0: none
	kernel bool // the kernel carries our bridge's frames to hop (overlay.KernelCarrier)
	frames []overlay.Frame
}

type learnOp struct {
	mac  frame.MAC
	peer mesh.PeerName
}

func newWorker(r *Switch, mtu int) *worker {
	w := &worker{r: r}
	if mtu > 0 {
		size := tap.Headroom + mtu + 18
		w.readBufs = make([][]byte, tap.IdealBatchSize)
		for i := range w.readBufs {
			w.readBufs[i] = make([]byte, size)
		}
		w.readSizes = make([]int, tap.IdealBatchSize)
	}
	return w
}

func (w *worker) begin() {
	w.now = time.Now().UnixNano()
	w.table = w.r.table.Load()
	for i := range w.groups {
		w.groups[i].frames = w.groups[i].frames[:0]
	}
	w.groups = w.groups[:0]
	w.learns = w.learns[:0]
	w.tapOut = w.tapOut[:0]
	w.tapGSO = w.tapGSO[:0]
	w.anyGSO = false
	w.nOwn = 0
	w.nSeg = 0
	w.arena = w.arena[:0]
}

// handleCaptured forwards the n frames just read from the bridge.
func (w *worker) handleCaptured(n int) {
	r := w.r
	w.begin()
	us := r.name
	var malformed, kernel uint64
	// Segments of one super-frame share their MACs: look each pair up once per run.
	var prevSrc, prevDst frame.MAC
	var prevOwner mesh.PeerName
	var prevOK, havePrev bool
	r.macs.mu.RLock()
	for i := range n {
		f := w.readBufs[i][tap.Headroom : tap.Headroom+w.readSizes[i]]
		if len(f) < frame.EthernetHeaderLen {
			malformed++
			continue
		}
		dst, src := frame.MAC(f[0:6]), frame.MAC(f[6:12])
		if dst == stpMAC {
			continue
		}
		same := havePrev && src == prevSrc && dst == prevDst
		if !same && !src.IsMulticast() && r.macs.needsLearnLocked(src, us, w.now) {
			w.learns = append(w.learns, learnOp{src, us})
		}
		// The overlay may write its headers into the headroom in front of the frame.
		fr := overlay.Frame{Src: us, Data: f, Buf: w.readBufs[i], Off: tap.Headroom}
		if w.readGSO != nil {
			fr.GSO = w.readGSO[i]
		}
		if dst.IsMulticast() {
			w.flood(fr)
			continue
		}
		owner, ok := prevOwner, prevOK
		if !same {
			owner, ok = r.macs.lookupLocked(dst)
			prevSrc, prevDst, prevOwner, prevOK, havePrev = src, dst, owner, ok, true
		}
		switch {
		case !ok:
			w.flood(fr) // unknown unicast
		case owner == us:
			// Both ends are on our bridge, which delivered it already.
		default:
			if hop, ok := r.unicastHop(w.table, owner); ok {
				if hop == owner && w.group(hop).kernel {
					// The bridge gave it to the kernel's port too, which sent it to owner.
					kernel++
					continue
				}
				fr.Dst = owner
				w.add(hop, fr)
			} else {
				r.stats.noRoute.Add(1)
			}
		}
	}
	r.macs.mu.RUnlock()
	r.stats.tapIn.Add(uint64(n))
	if malformed > 0 {
		r.stats.malformed.Add(malformed)
	}
	if kernel > 0 {
		r.stats.kernel.Add(kernel)
	}
	w.finish()
}

// handleForwarded handles frames an overlay received from a neighbour.
func (w *worker) handleForwarded(frames []overlay.Frame) {
	r := w.r
	w.begin()
	us := r.name
	var relayed, noRoute, malformed uint64
	r.macs.mu.RLock()
	for _, fr := range frames {
		if fr.Dst != us {
			if hop, ok := r.unicastHop(w.table, fr.Dst); ok && hop != us {
				w.add(hop, fr)
				relayed++
			} else {
				noRoute++
			}
			continue
		}
		if fr.Src == us || len(fr.Data) < frame.EthernetHeaderLen {
			malformed++ // our own frame came back, or nothing to deliver
			continue
		}
		dst, src := frame.MAC(fr.Data[0:6]), frame.MAC(fr.Data[6:12])
		if !src.IsMulticast() && r.macs.needsLearnLocked(src, fr.Src, w.now) {
			w.learns = append(w.learns, learnOp{src, fr.Src})
		}
		if !fr.Delivered { // else the neighbour's kernel path delivered it to our bridge
			w.injectFrame(fr)
		}
		// A frame for a MAC that is not on our bridge is a broadcast or an unknown unicast
		// of fr.Src: it continues along fr.Src's tree (Weave's rule).
		if owner, ok := r.macs.lookupLocked(dst); dst.IsMulticast() || !ok || owner != us {
			w.flood(fr)
		}
	}
	r.macs.mu.RUnlock()
	if relayed > 0 {
		r.stats.relayed.Add(relayed)
	}
	if noRoute > 0 {
		r.stats.noRoute.Add(noRoute)
	}
	if malformed > 0 {
		r.stats.malformed.Add(malformed)
	}
	w.finish()
}

// flood sends fr to the next hops of its origin's (fr.Src) spanning tree, each tagged for
// that hop. A neighbour that the kernel path already gave our own frame to gets it marked
// Delivered: it only passes it on to its part of the tree, which the kernel copy (isolated
// from its router) cannot reach.
func (w *worker) flood(fr overlay.Frame) {
	if fr.GSO.IsGSO() {
		// Rare (a TCP flow to a MAC nobody has learned yet): not worth carrying whole.
		w.cut(fr, func(seg overlay.Frame) { w.flood(seg) })
		return
	}
	own := fr.Src == w.r.name
	fr.Delivered = false
	for _, hop := range w.r.broadcastHops(w.table, fr.Src) {
		fr.Dst = hop
		if own && w.group(hop).kernel {
			fr.Delivered = true
			w.r.stats.relayOnly.Add(1)
			w.add(hop, fr)
			fr.Delivered = false
			continue
		}
		w.add(hop, fr)
	}
}

// add queues fr for hop, dealing with frames too big for the hop's path.
func (w *worker) add(hop mesh.PeerName, fr overlay.Frame) {
	g := w.group(hop)
	if fr.GSO.IsGSO() {
		if len(fr.Data) <= g.maxGSO && int(fr.GSO.HdrLen)+int(fr.GSO.GSOSize) <= g.max {
			g.frames = append(g.frames, fr)
			w.r.stats.gsoWhole.Add(1)
			return
		}
		// The hop takes no super-frames, or their segments would not fit the path: cut
		// it, and each segment takes the ordinary way (ICMP, fragments) below.
		w.cut(fr, func(seg overlay.Frame) { w.add(hop, seg) })
		return
	}
	if len(fr.Data) <= g.max {
		g.frames = append(g.frames, fr)
		return
	}
	if fr.Delivered {
		// Its sender has it already (through the kernel): no ICMP, no fragments.
		w.r.stats.oversize.Add(1)
		return
	}
	w.oversize(g, fr)
}

func (w *worker) group(hop mesh.PeerName) *group {
	for i := range w.groups {
		if w.groups[i].hop == hop {
			return &w.groups[i]
		}
	}
	if len(w.groups) < cap(w.groups) {
		w.groups = w.groups[:len(w.groups)+1]
	} else {
		w.groups = append(w.groups, group{})
	}
	g := &w.groups[len(w.groups)-1]
	g.hop = hop
	f := w.r.fwd.Load().f
	g.max = f.MaxFrame(hop)
	g.maxGSO = 0
	if gf, ok := f.(overlay.GSOForwarder); ok && !w.r.noGSO {
		g.maxGSO = gf.MaxGSO(hop)
	}
	g.kernel = false
	if kc, ok := f.(overlay.KernelCarrier); ok {
		g.kernel = kc.KernelCarries(hop)
	}
	g.frames = g.frames[:0]
	return g
}

// injectFrame queues fr for the bridge: in place when the overlay lent its buffer (see
// overlay.Frame.Buf), else as a copy in one of the worker's buffers.
func (w *worker) injectFrame(fr overlay.Frame) {
	f := fr.Data
	if fr.GSO.IsGSO() {
		if w.r.gsoOut == nil {
			w.cut(fr, func(seg overlay.Frame) { w.injectFrame(seg) })
			return
		}
		w.r.stats.gsoWhole.Add(1)
	}
	if len(f) > tapBufSize-tap.Headroom {
		w.r.stats.oversize.Add(1)
		return
	}
	if len(w.tapOut) == tapWriteBatch {
		w.flush() // frames queued for neighbours first: the TAP write may rewrite headers
	}
	w.tapGSO = append(w.tapGSO, fr.GSO)
	w.anyGSO = w.anyGSO || fr.GSO.IsGSO()
	if fr.Buf != nil && fr.Off >= tapOffset && fr.Off+len(f) <= cap(fr.Buf) {
		w.tapOut = append(w.tapOut, fr.Buf[fr.Off-tapOffset:fr.Off+len(f)])
		return
	}
	i := w.nOwn
	if i == len(w.tapBufs) {
		w.tapBufs = append(w.tapBufs, make([]byte, tapBufSize))
	}
	w.nOwn++
	b := w.tapBufs[i][tap.Headroom-tapOffset : tap.Headroom+len(f)]
	copy(b[tapOffset:], f)
	w.tapOut = append(w.tapOut, b)
}

// inject queues a copy of f (a frame of our own making) for the bridge.
func (w *worker) inject(f []byte) { w.injectFrame(overlay.Frame{Data: f}) }

// alloc returns n bytes of the batch's arena. Growing the arena leaves earlier slices valid
// (they keep the old array).
func (w *worker) alloc(n int) []byte {
	if cap(w.arena)-len(w.arena) < n {
		w.arena = make([]byte, 0, max(2*cap(w.arena), n, 1<<16))
	}
	l := len(w.arena)
	w.arena = w.arena[:l+n]
	return w.arena[l : l+n : l+n]
}

func (w *worker) finish() {
	r := w.r
	for _, l := range w.learns {
		moved, from := r.macs.learn(l.mac, l.peer, w.now)
		if moved {
			r.stats.moves.Add(1)
			r.log.Debug("MAC moved", logx.KeyMAC, l.mac.String(), logx.KeyFrom, from.String(), logx.KeyPeer, l.peer.String())
		}
		if r.learnr != nil {
			switch {
			case l.peer != r.name:
				r.learnr.Learn(net.HardwareAddr(l.mac[:]), l.peer)
			case moved:
				r.learnr.Forget(net.HardwareAddr(l.mac[:])) // it came home to our bridge
			}
		}
	}
	w.flush()
}

// flush sends the frames queued for neighbours, then writes those for the bridge (which
// may rewrite them while coalescing).
func (w *worker) flush() {
	f := w.r.fwd.Load().f
	for i := range w.groups {
		g := &w.groups[i]
		if len(g.frames) > 0 {
			f.Forward(g.hop, g.frames)
			g.frames = g.frames[:0]
		}
	}
	var gso []frame.VirtioNetHdr
	if w.anyGSO {
		gso = w.tapGSO
	}
	w.r.writeTAP(w.tapOut, gso)
	w.tapOut = w.tapOut[:0]
	w.tapGSO = w.tapGSO[:0]
	w.anyGSO = false
	w.nOwn = 0
	w.nSeg = 0
}

// cut cuts the super-frame fr into segments in the worker's buffers and hands each, as an
// ordinary frame with fr's tags, to next. The segments stay valid until the next flush.
func (w *worker) cut(fr overlay.Frame, next func(overlay.Frame)) {
	h := fr.GSO
	var s tap.Super
	if err := tap.PrepareRead(&h, fr.Data, &s); err != nil {
		w.r.stats.malformed.Add(1) // a peer's super-frame that does not parse
		return
	}
	w.r.stats.gsoCut.Add(1)
	segLen := tap.Headroom + s.SegmentLen()
	for k := 0; k < s.Segments(); {
		if w.nSeg == maxSegBufs {
			w.flush() // sends what uses the segment buffers, which are then free again
		}
		if w.nSeg == len(w.segBufs) {
			w.segBufs = append(w.segBufs, nil)
			w.segSizes = append(w.segSizes, 0)
		}
		// One segment at a time: each buffer is sized for it, and next may flush.
		if len(w.segBufs[w.nSeg]) < segLen {
			w.segBufs[w.nSeg] = make([]byte, segLen)
		}
		i := w.nSeg
		n, err := tap.Segment(&s, k, w.segBufs[i:i+1], w.segSizes[i:i+1], tap.Headroom)
		if err != nil || n == 0 {
			w.r.stats.malformed.Add(1)
			return
		}
		w.nSeg++
		k++
		seg := fr
		seg.GSO = frame.VirtioNetHdr{}
		seg.Data = w.segBufs[i][tap.Headroom : tap.Headroom+w.segSizes[i]]
		seg.Buf, seg.Off = w.segBufs[i], tap.Headroom
		next(seg)
	}
}
