package sleeve

// A batch is up to batchDatagrams datagrams to one neighbour, sent with one WriteBatch;
// batches are pooled per neighbour (queue.free) so the send path does not allocate.
type batch struct {
	bufs [][]byte // datagram buffers; a body starts at sealedHeaderLen
	lens []int    // body lengths
	// A lent datagram's body (one record) is lentBuf[i][lentOff[i]:][:lens[i]], in the
	// caller's buffer, with room in front for the plain header; only while the caller waits.
	lentBuf [][]byte
	lentOff []int
	pieces  []pieceHdr // datagram i carries a piece of a super-frame (gso.go)
	n       int        // datagrams in use
	frames  uint64
	bytes   uint64
}

func (n *neighbour) getBatch(limit int) *batch {
	size := sealedHeaderLen + limit + tagLen
	var b *batch
	select {
	case b = <-n.queue.free:
	default:
		b = &batch{bufs: make([][]byte, batchDatagrams), lens: make([]int, batchDatagrams),
			lentBuf: make([][]byte, batchDatagrams), lentOff: make([]int, batchDatagrams),
			pieces: make([]pieceHdr, batchDatagrams)}
	}
	if len(b.bufs[0]) < size {
		for i := range b.bufs {
			b.bufs[i] = make([]byte, size)
		}
	}
	b.n, b.frames, b.bytes = 0, 0, 0
	return b
}

func (n *neighbour) putBatch(b *batch) {
	clear(b.lentBuf[:b.n]) // the caller's buffers are theirs again
	clear(b.pieces[:b.n])
	select {
	case n.queue.free <- b:
	default:
	}
}
