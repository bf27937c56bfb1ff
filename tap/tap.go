package tap

import (
	"log/slog"

	"github.com/weavemesh/weave/tap/frame"
)

// Device is the bridge side of the data plane: a TAP interface carrying Ethernet frames.
//
// Buffers belong to the caller. A frame occupies bufs[i][offset:]; the bytes before offset are
// headroom the device may use (the offload path writes its virtio-net header there) and that
// the caller may use to prepend its own headers without copying. Callers should pass
// offset = Headroom.
//
// One goroutine at a time may call Read; Write may run concurrently with Read and is
// serialised internally. BatchSize is fixed for the life of the device.
type Device interface {
	// Read reads up to len(bufs) frames: frame i is written to bufs[i][offset:] and sizes[i]
	// is set to its length; it returns the number of frames (at least one unless err != nil).
	// It blocks until a frame arrives. With offloads on, one TSO super-frame from the kernel
	// is segmented into MSS-sized frames, filling several bufs; segments that do not fit are
	// returned by the next Read. Each buffer must hold offset+MTU()+EthernetHeader(18) bytes.
	// Frames the kernel hands over that cannot be decoded are dropped and counted (Stats),
	// never returned. After Close, Read returns an error wrapping net.ErrClosed.
	Read(bufs [][]byte, sizes []int, offset int) (n int, err error)

	// Write writes the frames bufs[i][offset:] and returns how many were written. With
	// offloads on, consecutive TCP segments of one flow are coalesced into one GSO super-frame
	// per kernel write; this modifies the buffers (headers, headroom, and the bytes past
	// len(bufs[i]) up to cap(bufs[i]) of a buffer that heads a coalesced run), so callers
	// must not reuse their contents afterwards. Give buffers a capacity of offset+65535 to
	// allow full coalescing; smaller buffers still work, they just coalesce less. With
	// offloads on, offset must be at least VirtioNetHdrLen (Headroom is). A frame the kernel
	// refuses is counted and reported in err while the rest of the batch is still written;
	// the count is of frames written. After Close, Write returns an error wrapping
	// net.ErrClosed.
	Write(bufs [][]byte, offset int) (int, error)

	// BatchSize is the number of buffers Read wants to be offered, fixed for life.
	BatchSize() int
	// MTU is the interface MTU (the IP MTU of the frames, without the Ethernet header).
	MTU() int
	// Name is the kernel interface name.
	Name() string
	// Close releases the device; idempotent. A Read or Write blocked in another goroutine
	// returns net.ErrClosed.
	Close() error
}

// MultiQueue is implemented by a Device opened with Config.Queues > 1: each queue is a
// Device of its own, to be read by its own goroutine (the kernel spreads flows over queues).
// Closing the parent closes every queue.
type MultiQueue interface {
	Queues() []Device
}

// GSOReader is implemented by devices that can hand over TSO/USO super-frames whole
// (GSO passthrough): the sleeve carries them to the peer's TAP, which takes them whole
// again, so neither end cuts and re-merges TCP segments in userspace.
type GSOReader interface {
	// ReadGSO is Read without segmentation: frame i is in bufs[i][offset:][:sizes[i]] and
	// gso[i] describes its offloads (IsGSO false for an ordinary frame, whose checksum is
	// complete). Each buffer must hold offset+MaxFrameSize bytes, and offset must be at
	// least VirtioNetHdrLen. Do not mix with Read on one device.
	ReadGSO(bufs [][]byte, sizes []int, gso []frame.VirtioNetHdr, offset int) (int, error)
}

// GSOWriter is implemented by devices that take super-frames described by a virtio-net
// header, as ReadGSO returns them (possibly on another host).
type GSOWriter interface {
	// WriteGSO is Write where gso[i] describes frame i: a super-frame is validated
	// (ValidateGSO) and written whole when the kernel takes offloads, else cut into
	// segments here; runs of ordinary frames (zero header) are written as Write writes them.
	// The count is of frames written (a super-frame counts as one when written whole).
	WriteGSO(bufs [][]byte, gso []frame.VirtioNetHdr, offset int) (int, error)
}

// StatsReporter is implemented by the Linux devices.
type StatsReporter interface {
	Stats() Stats
}

// Stats counts what a device did. Counters only grow.
type Stats struct {
	RxFrames      uint64 // frames returned by Read (after segmentation)
	RxSuperFrames uint64 // TSO/USO super-frames segmented
	RxDropped     uint64 // frames dropped on read: malformed, unsupported GSO type, too big for a buffer
	TxFrames      uint64 // frames passed to Write
	TxWrites      uint64 // kernel writes (lower than TxFrames when coalescing works)
	TxCoalesced   uint64 // frames merged into another frame's write
	TxDropped     uint64 // frames the kernel refused
}

// Offloader is implemented by devices that report whether TSO/GRO offloads are active.
type Offloader interface {
	OffloadActive() bool
}

const (
	// IdealBatchSize is the number of buffers per Read/Write call the data plane should
	// use: a 64 KiB super-frame at MSS 1448 needs 46, and two of them fit.
	IdealBatchSize = 128

	// Headroom is the offset callers should leave in front of each frame: 10 bytes for the
	// virtio-net header of the offload path plus room for the sleeve's encapsulation and
	// crypto headers, so that both are written in place.
	Headroom = 128

	// MaxFrameSize is the largest frame Write accepts and the largest super-frame the kernel
	// hands over with offloads on (64 KiB IP packet plus a tagged Ethernet header).
	MaxFrameSize = 65535 + 18
)

// DefaultMTU is the MTU Open sets when Config.MTU is 0 (Weave's sleeve default).
const DefaultMTU = 1376

// Config configures Open.
type Config struct {
	// Name is the interface name; empty lets the kernel choose (tapN).
	Name string
	// MTU to set on the interface; 0 keeps what the interface has (1500 for a new one).
	MTU int
	// Offload opens /dev/net/tun directly with IFF_VNET_HDR and enables TSO/checksum
	// offloads, so the kernel hands over 64 KiB super-frames and accepts coalesced ones.
	// If the kernel refuses, Open logs why and falls back to the plain path. Without
	// Offload the device is opened through github.com/songgao/water.
	Offload bool
	// Queues > 1 opens a multiqueue device (IFF_MULTI_QUEUE) with that many queues, see
	// MultiQueue.
	Queues int
	// Persist keeps the interface after the process exits (TUNSETPERSIST). When false,
	// persistence is cleared, so a device left persistent by an earlier run goes away with
	// this one.
	Persist bool
	// Logger receives the device's logs; nil discards them.
	Logger *slog.Logger
}

func (c *Config) logger() *slog.Logger {
	if c.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Logger
}
